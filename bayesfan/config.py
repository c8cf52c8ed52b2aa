"""Typed run configuration: the one object the CLI, the flow and the deployment form share."""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import PurePosixPath
from typing import Literal

import fsspec
import yaml

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bayesfan.engine import SamplerConfig


class FitConfig(BaseModel):
    """Everything that determines a fit; the artifact records it in full."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(description="Parquet or CSV file: a local path or any fsspec URL (s3://...)")
    model: str = Field(description="registered model name, or module.path:object")
    partition_by: tuple[str, ...] = Field((), description="columns whose values name a partition")
    out: str = Field(description="artifact directory: a local path or s3://bucket/prefix")
    model_options: dict[str, object] = Field(default_factory=dict, description="the model's own options")
    chains: int = Field(4, ge=1, le=64, description="NUTS chains per partition")
    warmup: int = Field(500, ge=10, le=100_000, description="warmup (adaptation) iterations per chain")
    draws: int = Field(500, ge=10, le=100_000, description="kept draws per chain")
    seed: int = Field(0, ge=0, lt=2**31, description="the run's seed; per-partition keys derive from it")
    target_accept: float = Field(0.8, gt=0.0, lt=1.0, description="NUTS target acceptance probability")
    max_tree_depth: int = Field(10, ge=1, le=15, description="NUTS maximum tree depth")
    laplace: bool = Field(
        True, description="start each partition at its posterior mode (Newton's method from every chain's start) and "
        "sample in coordinates that whiten the Laplace approximation there"
    )
    kernel: Literal["auto", "stepwise", "lockstep"] = Field(
        "auto", description="how a batch's chains advance: stepwise (each chain on its own trajectory), lockstep "
        "(whole transitions, every chain waiting for the batch's longest), or auto (lockstep for cheap gradients "
        "and small batches)"
    )
    batch_size: int = Field(32, ge=1, le=65_536, description="most partitions per batch (one task)")
    workers: int | None = Field(None, ge=1, le=1024, description="worker processes (default: CPU count)")
    max_retries: int = Field(3, ge=0, le=20, description="retries of a failed batch")
    retry_delay: float = Field(1.0, ge=0.0, le=3600.0, description="first retry delay in seconds, doubling")
    mode: Literal["partitions", "consensus"] = Field(
        "partitions", description="one model per partition, or one model on data split into shards"
    )
    shards: int = Field(4, ge=1, le=4096, description="consensus mode: number of data shards")
    combine: Literal["consensus", "consensus-diag", "parametric", "semiparametric", "full"] = Field(
        "consensus", description="consensus mode: how sub-posteriors are combined"
    )
    shard_by: str | None = Field(None, description="consensus mode: keep all rows of a group in one shard")
    backend: Literal["local", "dask", "pool", "batch"] = Field(
        "local", description="where batches run: local process pool, Dask, a Prefect work pool, or AWS Batch"
    )
    dask_address: str | None = Field(None, description="dask backend: scheduler address (default: a LocalCluster)")
    work_pool: str | None = Field(None, description="pool backend: the Prefect work pool of the fit-batch deployment")
    max_in_flight: int = Field(64, ge=1, le=100_000, description="pool/batch backends: most batches running at once")
    job_queue: str | None = Field(None, description="batch backend: AWS Batch job queue")
    job_definition: str | None = Field(None, description="batch backend: AWS Batch job definition")
    poll_seconds: float | None = Field(
        None, gt=0.0, le=3600.0, description="pool/batch backends: seconds between status polls (default 2 and 30)"
    )
    result_wait_seconds: float = Field(
        120.0, ge=0.0, le=86_400.0, description="batch backend: how long a SUCCEEDED child's result may take to "
        "appear in storage before the batch counts as failed"
    )
    max_interruptions: int = Field(
        5, ge=0, le=100, description="resubmissions of a batch whose worker crashed or was interrupted (Spot)"
    )
    max_refits: int = Field(
        1, ge=0, le=5, description="refits of unconverged partitions, each with double warmup and higher target_accept"
    )
    max_divergence_rate: float = Field(
        0.01, ge=0.0, le=1.0, description="fraction of divergent draws above which a partition is unconverged"
    )
    min_success_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="fraction of partitions that must be ok or unconverged for the run to succeed"
    )
    warm_start: str | None = Field(None, description="a previous artifact to start each partition's chains from")
    warm_warmup: int = Field(150, ge=0, le=100_000, description="warmup iterations of a warm-started partition")
    report: bool = Field(True, description="write report.html (plots) into the artifact")
    rhat_max: float = Field(1.01, gt=1.0, description="R-hat above this marks a partition unconverged")
    ess_min: float = Field(100.0, ge=0.0, description="bulk ESS below this marks a partition unconverged")

    @field_validator("partition_by", mode="before")
    @classmethod
    def _split_columns(cls, value):
        if isinstance(value, str):
            return tuple(c.strip() for c in value.split(",") if c.strip())
        return value

    @model_validator(mode="after")
    def _partition_columns_required(self):
        if self.mode == "partitions" and not self.partition_by:
            raise ValueError("partition mode needs partition_by (e.g. --partition-by market,network)")
        return self

    @property
    def sampler(self) -> SamplerConfig:
        return SamplerConfig(self.chains, self.warmup, self.draws, self.target_accept, self.max_tree_depth, self.laplace,
                             self.kernel)

    def refit(self, round_: int) -> "FitConfig":
        """Settings of refit round ``round_`` (1, 2, ...): warmup x 2^r, target_accept closer to 1."""
        return self.model_copy(update={
            "warmup": self.warmup * 2**round_,
            "target_accept": 1.0 - (1.0 - self.target_accept) / 2**round_,
        })

    def fingerprint_fields(self) -> dict:
        """The fields a batch's identity depends on (not paths, workers or retries)."""
        return self.model_dump(
            mode="json", include={"model", "model_options", "chains", "warmup", "draws", "seed", "target_accept",
                                  "max_tree_depth", "laplace", "kernel", "mode", "shards", "combine", "shard_by",
                                  "warm_warmup"}
        )

    def run_id(self, data_fingerprint: str) -> str:
        """The run's id: the same fit config and input data give the same id."""
        blob = json.dumps([self.fingerprint_fields(), data_fingerprint], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class ConfigFileError(ValueError):
    """A settings file that cannot be read or parsed; the message names the file."""


def read_settings(path: str) -> dict:
    """The mapping of ``FitConfig`` fields in a YAML (.yaml, .yml), JSON or TOML file (local or fsspec URL).

    Not validated here: ``FitConfig(**read_settings(path))`` does that, and the CLI
    lays its flags over the file first.
    """
    parse = {".json": json.loads, ".toml": tomllib.loads, ".yaml": yaml.safe_load, ".yml": yaml.safe_load}
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in parse:
        raise ConfigFileError(f"{path}: unknown config format {suffix or '(no suffix)'!r}; use .yaml, .json or .toml")
    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            settings = parse[suffix](f.read())
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: no such file") from None
    except (ValueError, yaml.YAMLError) as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigFileError(f"{path}: not valid {suffix[1:].upper()}: {' '.join(str(exc).split())}") from None
    if not isinstance(settings, dict):
        raise ConfigFileError(f"{path}: expected a mapping of FitConfig fields, got {type(settings).__name__}")
    return settings

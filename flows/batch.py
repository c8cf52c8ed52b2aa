"""``fit-batch``: one batch as its own flow run, the child the ``pool`` backend launches
through the ``fit-batch`` deployment (an ECS task on Fargate Spot in production).

Inputs and results travel through storage: the parameters are the fit config and
the batch plan; the result is the batch's ``done.json`` in ``config.out``.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from bayesfan.config import FitConfig
from tasks.sample import sample_batch
from tasks.split import BatchPlan


def _run_name() -> str:
    plan = flow_run.parameters["plan"]
    plan = plan if isinstance(plan, BatchPlan) else BatchPlan.model_validate(plan)
    return f"fit-batch {plan.index:04d} ({len(plan.partitions)} partitions)"


@flow(name="fit-batch", flow_run_name=_run_name, validate_parameters=True)
def fit_batch_flow(config: FitConfig, plan: BatchPlan, attempt: int = 1) -> dict:
    """Fit one batch and write its result under ``config.out``; return its small record."""
    return sample_batch(config, plan, attempt)

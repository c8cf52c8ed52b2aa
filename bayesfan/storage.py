"""Artifact storage on a local path or any fsspec URL (s3:// through s3fs).

Writes are atomic for readers: on local disk a file is written under a temporary
name and renamed; on an object store a PUT is atomic already. A batch or run
counts as done only through a JSON record written last, which lists checksums.
On S3, s3fs retries each request on SlowDown and (set up here) on any 5xx answer;
every Store operation is then retried as a whole, with bounded backoff, on the
transient errors (5xx, SlowDown, timeouts) that still get through.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import tempfile
import time
import uuid
import zipfile

import fsspec
import xarray as xr
from fsspec.core import url_to_fs
from zarr.storage import ZipStore

#: Waits between attempts of a storage operation that failed transiently (5 attempts in all).
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0)
_DEFINITE = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.EREMOTEIO}


class StorageError(OSError):
    """The artifact location cannot be reached or written; the message is one line naming it."""


def is_transient(exc: BaseException) -> bool:
    """A 5xx, SlowDown, timeout or dropped connection: worth another try."""
    if isinstance(exc, _DEFINITE):
        return False
    return isinstance(exc, (TimeoutError, ConnectionError)) or (
        isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS
    )


def retried(func):
    """``func`` retried after each of ``RETRY_DELAYS`` while it fails transiently."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for delay in RETRY_DELAYS:
            try:
                return func(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - re-raised unless transient
                if not is_transient(exc):
                    raise
            time.sleep(delay)
        return func(*args, **kwargs)

    return wrapper


class Store:
    """A directory of the artifact, local or remote; paths are '/'-joined relative names."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.fs, self._base = url_to_fs(self.root)
        if "s3" in _protocols(self.fs):
            _s3_retries()

    def url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def path(self, *parts: str) -> str:
        return "/".join([self._base, *parts])

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    @retried
    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    @retried
    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    @retried
    def write_bytes(self, data: bytes, *parts: str) -> None:
        target = self.path(*parts)
        if not self.is_local:  # an object store's PUT is atomic (and makedirs would create a bucket)
            self.fs.pipe_file(target, data)
            return
        self.fs.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, target)

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    def write_json(self, obj, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=1, sort_keys=True, default=str).encode(), *parts)

    @retried
    def put_dir(self, local_dir: str, *parts: str) -> None:
        """Copy a local directory tree to ``parts``, replacing what was there."""
        target = self.path(*parts)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            self.fs.put(local_dir.rstrip("/") + "/", tmp, recursive=True)
            os.replace(tmp, target)
        else:
            self.fs.put(local_dir.rstrip("/") + "/", target, recursive=True)

    @retried
    def remove(self, *parts: str) -> None:
        if self.fs.exists(self.path(*parts)):
            self.fs.rm(self.path(*parts), recursive=True)


def check_writable(url: str) -> None:
    """Write and delete a probe object, so a bad artifact location fails before any work (``StorageError``)."""
    probe = f".probe-{uuid.uuid4().hex[:8]}"
    try:
        store = Store(url)
        store.write_bytes(b"", probe)
        store.remove(probe)
    except Exception as exc:  # noqa: BLE001 - every cause becomes one line naming the location
        raise StorageError(f"{url}: cannot write there: {storage_problem(exc) or first_line(exc)}") from None


def storage_problem(exc: BaseException) -> str | None:
    """One line for a missing-credentials or unreachable-endpoint error (never the credentials), else None."""
    try:
        from botocore import exceptions as boto
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        return None
    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return "no credentials (set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ProxyConnectionError)):
        return f"cannot reach the storage endpoint ({first_line(exc)})"
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_file(url: str, mode: str = "rb"):
    if url.startswith(("s3://", "s3a://")):
        _s3_retries()
    return fsspec.open(url, mode)


@functools.cache
def _s3_retries() -> None:
    """Make s3fs retry every request answered 5xx (by itself it retries only SlowDown)."""
    from s3fs.core import set_custom_error_handler

    set_custom_error_handler(_is_server_error)


def _is_server_error(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict) else None
    return isinstance(status, int) and status >= 500


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def pack_tree(tree: xr.DataTree) -> bytes:
    """A DataTree as a zarr store packed in one zip: one object to checksum and upload."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "tree.zarr")
        tree.to_zarr(root, consolidated=False)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
            for folder, _, files in sorted(os.walk(root)):
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    info = zipfile.ZipInfo(os.path.relpath(full, root), date_time=(2000, 1, 1, 0, 0, 0))
                    with open(full, "rb") as f:
                        zf.writestr(info, f.read())
        return buffer.getvalue()


def unpack_tree(data: bytes) -> xr.DataTree:
    """A DataTree packed by ``pack_tree``, read fully into memory."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tree.zarr.zip")
        with open(path, "wb") as f:
            f.write(data)
        store = ZipStore(path, mode="r")
        try:
            return xr.open_datatree(store, engine="zarr", consolidated=False).load()
        finally:
            store.close()

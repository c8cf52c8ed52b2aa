"""Artifact storage on a local path or any fsspec URL (s3:// through s3fs).

Writes are atomic for readers: a file is written under a temporary name and
then moved (a rename on local disk, a copy+delete on S3). A batch or run counts
as done only through a JSON record written last, which lists checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import fsspec
from fsspec.core import url_to_fs


class Store:
    """A directory of the artifact, local or remote; paths are '/'-joined relative names."""

    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.fs, self._base = url_to_fs(self.root)

    def url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def path(self, *parts: str) -> str:
        return "/".join([self._base, *parts])

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        target = self.path(*parts)
        self.fs.makedirs(os.path.dirname(target) if self.is_local else target.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, target)

    def read_json(self, *parts: str):
        return json.loads(self.read_bytes(*parts))

    def write_json(self, obj, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=1, sort_keys=True, default=str).encode(), *parts)

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

    def remove(self, *parts: str) -> None:
        if self.exists(*parts):
            self.fs.rm(self.path(*parts), recursive=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_file(url: str, mode: str = "rb"):
    return fsspec.open(url, mode)


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)

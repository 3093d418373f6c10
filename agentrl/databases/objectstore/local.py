"""The default object store: a local directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from agentrl.databases.objectstore.base import REF_SCHEME, ObjectStore
from agentrl.errors import ObjectNotFoundError


class LocalObjectStore(ObjectStore):
    """Objects as files under ``root`` (``root/<key>``), written atomically (temp file + rename).

    Args:
        root: directory; created when missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"object key {key!r} escapes the store directory")
        return path

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return REF_SCHEME + key

    def get(self, ref: str) -> bytes:
        try:
            return self._path(self.key_of(ref)).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(ref) from exc

    def delete(self, ref: str) -> None:
        self._path(self.key_of(ref)).unlink(missing_ok=True)

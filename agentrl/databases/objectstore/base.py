"""The object-store interface and the moving of large message fields into it.

Large binary fields (screenshots, images) do not belong in MongoDB documents. :func:`externalize`
walks a JSON-like value (messages, observations), stores every image given as bytes or as a
base64 ``data:`` URL, and leaves a reference ``{"$objref": "objstore://<key>", "mime": ...}``
in its place. :func:`internalize` puts the bytes back, as a ``data:`` URL (or raw bytes where raw
bytes were stored).
"""

from __future__ import annotations

import base64
import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any

REF_SCHEME = "objstore://"
REF_KEY = "$objref"
TEXT_MIME = "text"
"""``mime`` of a reference to a moved string (read back as ``str``)."""
JSON_MIME = "json"
"""``mime`` of a reference to a moved JSON value (read back as the value)."""
MIN_EXTERNAL_BYTES = 1024
"""Binary values smaller than this (bytes) stay inline."""


class ObjectStore(ABC):
    """Where large blobs live. Keys are ``/``-separated strings; values are bytes."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store ``data`` under ``key``; returns the reference ``objstore://<key>``."""

    @abstractmethod
    def get(self, ref: str) -> bytes:
        """The bytes behind a reference (or a bare key).

        Raises:
            ObjectNotFoundError: nothing is stored there.
        """

    @abstractmethod
    def delete(self, ref: str) -> None:
        """Remove the object (no error when absent)."""

    @staticmethod
    def key_of(ref: str) -> str:
        """The key inside a reference (``objstore://a/b`` → ``a/b``)."""
        return ref[len(REF_SCHEME) :] if ref.startswith(REF_SCHEME) else ref


def _content_key(prefix: str, data: bytes, ext: str) -> str:
    return f"{prefix.strip('/')}/{hashlib.sha256(data).hexdigest()[:32]}.{ext}".lstrip("/")


def externalize(value: Any, store: ObjectStore, prefix: str = "blobs") -> Any:
    """Return ``value`` with every large image (bytes or base64 ``data:`` URL) moved to ``store``.

    Keys are content hashes, so storing the same image twice writes it once.

    Args:
        value: dicts, lists, strings, bytes (e.g. OpenAI messages with ``image_url`` parts).
        store: where the bytes go.
        prefix: key prefix, e.g. ``records/<record_id>``.
    """
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        if len(data) < MIN_EXTERNAL_BYTES:
            return data
        return {REF_KEY: store.put(_content_key(prefix, data, "bin"), data), "mime": "bytes"}
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value:
        if len(value) < MIN_EXTERNAL_BYTES:
            return value
        header, b64 = value.split(",", 1)
        mime = header[5:].split(";", 1)[0] or "application/octet-stream"
        data = base64.b64decode(b64)
        ext = mime.rsplit("/", 1)[-1]
        return {REF_KEY: store.put(_content_key(prefix, data, ext), data, mime), "mime": mime}
    if isinstance(value, dict):
        return {k: externalize(v, store, prefix) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [externalize(v, store, prefix) for v in value]
    return value


def has_blobs(value: Any) -> bool:
    """Whether :func:`externalize` would move anything of ``value`` (bytes or a base64
    ``data:`` URL of at least :data:`MIN_EXTERNAL_BYTES`); a walk without I/O, so a caller can
    skip handing small values to a thread."""
    if isinstance(value, bytes | bytearray):
        return len(value) >= MIN_EXTERNAL_BYTES
    if isinstance(value, str):
        return len(value) >= MIN_EXTERNAL_BYTES and value.startswith("data:") and (
            ";base64," in value)
    if isinstance(value, dict):
        return any(has_blobs(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_blobs(v) for v in value)
    return False


def is_ref(value: Any) -> bool:
    """Whether ``value`` is a reference left by :func:`externalize`."""
    return isinstance(value, dict) and REF_KEY in value


def internalize(value: Any, store: ObjectStore) -> Any:
    """Inverse of :func:`externalize` (and of the Record boundary,
    :func:`agentrl.rollout.storable.to_storable`): references become ``data:`` URLs, bytes,
    strings or JSON values again."""
    if is_ref(value):
        data = store.get(value[REF_KEY])
        mime = value.get("mime", "bytes")
        if mime == "bytes":
            return data
        if mime == TEXT_MIME:
            return data.decode("utf-8")
        if mime == JSON_MIME:
            return json.loads(data)
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    if isinstance(value, dict):
        return {k: internalize(v, store) for k, v in value.items()}
    if isinstance(value, list):
        return [internalize(v, store) for v in value]
    return value

"""The boundary between what a sampler leaves in a Record and what MongoDB can store.

:func:`to_storable` walks a sampler's output (``record.meta``) once, before it is written:

- numpy scalars become Python numbers (``numpy.int64(3)`` → ``3``, ``numpy.float32`` → float,
  ``numpy.bool_`` → bool) and numpy arrays nested lists of them; tuples become lists; enums
  their values; pydantic models their ``model_dump()``;
- a string, bytes value or subtree larger than ``threshold_bytes`` moves to the object store and
  leaves a reference (``{"$objref": "objstore://...", "mime": ...}``; read it back with
  :func:`agentrl.databases.objectstore.internalize`);
- any other value BSON cannot hold (a set, an object, a non-string key, an integer beyond 64
  bits) raises :class:`~agentrl.errors.InvalidOutputError` naming the field path.

:func:`check_document_size` refuses a document still over MongoDB's 16 MiB limit, naming its
largest fields.
"""

from __future__ import annotations

import datetime
import json
import uuid
from enum import Enum
from typing import Any

import bson
from pydantic import BaseModel

from agentrl.databases.objectstore import ObjectStore
from agentrl.databases.objectstore.base import JSON_MIME, REF_KEY, TEXT_MIME
from agentrl.errors import InvalidOutputError

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""MongoDB's BSON document limit, in bytes."""

_INT64 = (-(2**63), 2**63 - 1)
_SCALARS = (str, bool, float, type(None), datetime.datetime, bson.ObjectId, uuid.UUID)


def _numpy_value(value: Any) -> tuple[bool, Any]:
    """``(True, plain)`` for a numpy scalar or array (by duck type: numpy is not required)."""
    if type(value).__module__ != "numpy":
        return False, None
    if hasattr(value, "tolist"):
        return True, value.tolist()
    if hasattr(value, "item"):
        return True, value.item()
    return False, None


def _plain(value: Any, path: str, record_id: str) -> Any:
    """``value`` with numpy/enums/models/tuples converted; raises on what BSON cannot hold."""
    is_numpy, converted = _numpy_value(value)
    if is_numpy:
        return _plain(converted, path, record_id)
    if isinstance(value, bool) or isinstance(value, _SCALARS):
        return value
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise InvalidOutputError(record_id, path, f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, Enum):
        return _plain(value.value, path, record_id)
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="python"), path, record_id)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidOutputError(
                    record_id, f"{path}.{key!r}",
                    f"key of type {type(key).__name__}: MongoDB keys must be strings",
                )
            out[key] = _plain(item, f"{path}.{key}", record_id)
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{path}.{i}", record_id) for i, item in enumerate(value)]
    raise InvalidOutputError(
        record_id, path,
        f"a {type(value).__module__}.{type(value).__qualname__} cannot be stored; convert it to "
        "numbers, strings, lists or dicts",
    )


def _size(value: Any) -> int:
    """BSON size of ``value`` in bytes (as the value of one field)."""
    return len(bson.encode({"v": value})) - 8


def _externalize_large(
    value: Any, threshold_bytes: int, objects: ObjectStore, prefix: str, path: str
) -> Any:
    """Move every subtree over ``threshold_bytes`` to ``objects`` (largest first, deepest fit)."""
    if _size(value) <= threshold_bytes:
        return value
    if isinstance(value, dict) and REF_KEY not in value:
        small = {k: _externalize_large(v, threshold_bytes, objects, prefix, f"{path}.{k}")
                 for k, v in value.items()}
        if _size(small) <= threshold_bytes:
            return small
        return _store(small, objects, prefix, path)
    if isinstance(value, list):
        small_list = [_externalize_large(v, threshold_bytes, objects, prefix, f"{path}.{i}")
                      for i, v in enumerate(value)]
        if _size(small_list) <= threshold_bytes:
            return small_list
        return _store(small_list, objects, prefix, path)
    return _store(value, objects, prefix, path)


def _store(value: Any, objects: ObjectStore, prefix: str, path: str) -> dict[str, Any]:
    """Put one value in the object store; returns its reference."""
    key = f"{prefix.strip('/')}/{path}-{uuid.uuid4().hex[:12]}"
    if isinstance(value, bytes):
        return {REF_KEY: objects.put(key + ".bin", value), "mime": "bytes"}
    if isinstance(value, str):
        data = value.encode("utf-8")
        return {REF_KEY: objects.put(key + ".txt", data, "text/plain"), "mime": TEXT_MIME,
                "bytes": len(data)}
    data = json.dumps(value, default=str).encode("utf-8")
    return {REF_KEY: objects.put(key + ".json", data, "application/json"), "mime": JSON_MIME,
            "bytes": len(data)}


def to_storable(
    value: Any,
    *,
    record_id: str,
    path: str = "meta",
    threshold_bytes: int,
    objects: ObjectStore,
) -> Any:
    """A copy of a sampler's output that MongoDB can store (see the module docstring).

    Args:
        value: the output (usually ``record.meta``).
        record_id: the Record it belongs to (named in errors; object keys start with it).
        path: the field's dotted path in the document (named in errors).
        threshold_bytes: values larger than this many bytes go to the object store.
        objects: the object store.

    Returns:
        Plain dicts, lists, numbers and strings, with references where values were moved.

    Raises:
        InvalidOutputError: a value BSON cannot hold (the message names its path).
    """
    plain = _plain(value, path, record_id)
    return _externalize_large(plain, threshold_bytes, objects, f"records/{record_id}", path)


def check_document_size(doc: dict[str, Any], record_id: str) -> None:
    """Refuse a document MongoDB cannot store.

    Raises:
        InvalidOutputError: the document is over :data:`MAX_DOCUMENT_BYTES`; the message names
            its five largest fields with their sizes.
    """
    size = len(bson.encode(doc))
    if size <= MAX_DOCUMENT_BYTES:
        return
    fields = sorted(((k, _size(v)) for k, v in doc.items()), key=lambda kv: -kv[1])[:5]
    listed = ", ".join(f"{k} ({n / 1e6:.1f} MB)" for k, n in fields)
    raise InvalidOutputError(
        record_id, fields[0][0],
        f"the record is {size / 1e6:.1f} MB, over MongoDB's 16 MiB limit; largest fields: "
        f"{listed}. Lower externalize_threshold_bytes or store less in record.meta",
    )

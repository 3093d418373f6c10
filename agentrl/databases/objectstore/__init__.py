"""Object stores for large binary fields: a local directory (default) or MinIO/S3."""

from agentrl.databases.objectstore.base import (
    ObjectStore,
    externalize,
    has_blobs,
    internalize,
    is_ref,
)
from agentrl.databases.objectstore.local import LocalObjectStore
from agentrl.databases.objectstore.s3 import S3ObjectStore

__all__ = [
    "LocalObjectStore",
    "ObjectStore",
    "S3ObjectStore",
    "externalize",
    "has_blobs",
    "internalize",
    "is_ref",
    "open_object_store",
]


def open_object_store(connection_string: str, local_dir: str) -> ObjectStore:
    """The S3 store when ``connection_string`` is set, else a local directory store."""
    if connection_string:
        return S3ObjectStore(connection_string)
    return LocalObjectStore(local_dir)

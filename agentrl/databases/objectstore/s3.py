"""The MinIO/S3 object store (the ``minio`` client), chosen when ``oss_connection_string`` is set.

Connection string: ``s3://ACCESS_KEY:SECRET_KEY@HOST:PORT/BUCKET[?secure=true&region=R]``.
"""

from __future__ import annotations

import io
from urllib.parse import parse_qs, unquote, urlparse

from minio import Minio
from minio.error import S3Error

from agentrl.databases.objectstore.base import REF_SCHEME, ObjectStore
from agentrl.errors import ConfigError, ObjectNotFoundError


class S3ObjectStore(ObjectStore):
    """Objects in one S3 bucket (created when missing).

    Args:
        connection_string: see the module docstring.

    Raises:
        ConfigError: the connection string has no host or bucket.
    """

    def __init__(self, connection_string: str) -> None:
        url = urlparse(connection_string)
        bucket = url.path.strip("/")
        if url.scheme not in ("s3", "minio") or not url.hostname or not bucket:
            raise ConfigError(
                "oss_connection_string",
                "s3://***",
                "expected s3://ACCESS:SECRET@HOST:PORT/BUCKET",
            )
        query = parse_qs(url.query)
        secure = query.get("secure", ["false"])[0].lower() == "true"
        endpoint = f"{url.hostname}:{url.port}" if url.port else url.hostname
        self.bucket = bucket
        self.client = Minio(
            endpoint,
            access_key=unquote(url.username or ""),
            secret_key=unquote(url.password or ""),
            secure=secure,
            region=query.get("region", [None])[0],
        )
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
        )
        return REF_SCHEME + key

    def get(self, ref: str) -> bytes:
        try:
            response = self.client.get_object(self.bucket, self.key_of(ref))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFoundError(ref) from exc
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def delete(self, ref: str) -> None:
        self.client.remove_object(self.bucket, self.key_of(ref))

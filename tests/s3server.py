"""A real S3 server on loopback for the tests: moto's, at a free port, stopped after the session.

Tests talk to it through the real clients (s3fs through fsspec, Lance's object store), with the
options each takes; nothing is mocked in-process.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    requests: list[tuple[str, str, str | None]] = dataclasses.field(default_factory=list)  # method, path, Range

    @property
    def fsspec_options(self) -> dict[str, Any]:
        """storage_options for fsspec/s3fs."""
        return {"key": "testing", "secret": "testing",
                "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"}}

    @property
    def lance_options(self) -> dict[str, str]:
        """storage_options for Lance's object store."""
        return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_region": "us-east-1",
                "aws_endpoint": self.endpoint, "allow_http": "true"}

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its name."""
        import boto3

        name = f"test-{secrets.token_hex(6)}"
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket=name)
        return name

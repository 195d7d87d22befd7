"""A local S3 endpoint (`moto_server`, from PyPI `moto[server]`) that gives the
Tansu broker durable storage (`s3://BUCKET/`) on loopback.

The objects live in the moto_server process's memory: they survive broker
crashes and restarts, not a restart of moto_server itself.
"""
from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from streamflame.embedded.process import StartupError
from streamflame.embedded.service import Service


def find_moto_server() -> str:
    """Path of the `moto_server` script: next to this interpreter first
    (a venv), else on PATH."""
    here = Path(sys.executable).parent / "moto_server"
    if here.exists():
        return str(here)
    found = shutil.which("moto_server")
    if found is None:
        raise StartupError(
            "moto_server not found (needed for durable broker storage): "
            "pip install 'moto[server]' (part of the project's `test` extra)"
        )
    return found


class LoopbackS3(Service):
    """What every S3 endpoint on loopback shares: the client environment and a readiness
    probe that creates the bucket. Subclasses set ``endpoint``, ``bucket`` and the keys."""

    access_key, secret_key = "x", "y"      # neither server checks credentials

    def client_env(self) -> dict[str, str]:
        """Environment a client (Tansu, boto) needs to use this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def ready(self) -> bool:
        # CreateBucket (a plain PUT; us-east-1 needs no body) doubles as the readiness
        # probe; 409 = it exists (owned by us, or kept from before a restart).
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return 200 <= response.status < 300
        except urllib.error.HTTPError as exc:
            return exc.code == 409


class MotoServer(LoopbackS3):
    """`moto_server` on a free loopback port with one bucket created."""

    name = "moto"

    def __init__(self, run_dir: str | Path, port: int | None = None, bucket: str = "tansu") -> None:
        super().__init__(run_dir, port)
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [find_moto_server(), "-H", "127.0.0.1", "-p", str(self.port)]

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.client_env()}


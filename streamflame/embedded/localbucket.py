"""A local S3 endpoint whose objects are plain files: `localbucket` (PyPI, one
stdlib-only module), the storage behind the durable embedded Tansu broker
(`s3://BUCKET/`).

Why this one (measured on this 2-core machine, Tansu 0.6.0, kafka-python,
acks=all, 100k small records; docs/reliability.md has the table):

- it keeps every object as a file under ``data_dir``, written to a temporary
  file and renamed into place (a crash never leaves half an object), so the
  broker's records and committed offsets survive a SIGKILL of broker and S3
  server together and a restart on other ports;
- it answers ``PutObject`` with ``If-None-Match: *`` by 412 when the object
  exists. Tansu relies on that after a restart: it first tries to create each
  partition's ``watermark.json`` and reads the stored one only when refused.
  s3rver (npm) ignores the header, so a restarted Tansu on it starts every
  partition at offset 0 again and overwrites the old records (measured: all
  300 of 300 records overwritten);
- with TCP_NODELAY (set here: its http.server otherwise waits ~33 ms per GET
  on delayed ACKs) it produces ~70k/s and consumes ~104k/s, against moto's
  ~37k/s and ~98k/s; moto keeps objects in process memory (0 of 100,000 back
  after a restart), and its request recorder replays an ever-growing log of
  every request on each start.

Writes are not fsynced: what the kernel has not yet written back (up to ~30 s
with the default ``vm.dirty_expire_centisecs``) is lost on power loss, never on
a process crash. `streamflame down` calls sync(2) after stopping it.
"""
from __future__ import annotations

import sys
from pathlib import Path

from streamflame.embedded.process import StartupError
from streamflame.embedded.moto import LoopbackS3

# localbucket's own main() with its request log quiet (root logger at WARNING
# first, so its basicConfig(INFO) does nothing) and Nagle off.
_LAUNCH = (
    "import logging, sys; logging.basicConfig(level=logging.WARNING); "
    "import localbucket; localbucket.S3Handler.disable_nagle_algorithm = True; "
    "sys.argv[0] = 'localbucket'; localbucket.main()"
)


def _check_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("localbucket") is None:
        raise StartupError("the durable embedded broker needs the `localbucket` package (pip install localbucket), "
                           "or start with --ephemeral (no persistence)")


class LocalBucketServer(LoopbackS3):
    """`localbucket` on a free loopback port, objects under `data_dir`, one bucket created."""

    access_key = secret_key = "local"      # not checked

    name = "s3"

    def __init__(self, run_dir: str | Path, data_dir: str | Path | None = None, port: int | None = None,
                 bucket: str = "tansu") -> None:
        super().__init__(run_dir, port)
        self.data_dir = Path(data_dir).resolve() if data_dir else self.run_dir / "broker-data"
        self.bucket = bucket

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        _check_installed()
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        return [sys.executable, "-c", _LAUNCH, str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)]

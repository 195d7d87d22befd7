"""``streamflame ingest``: one ingest consumer process (the shell: :mod:`streamflame.pipeline.shell`)."""
from __future__ import annotations

import argparse
import sys

from streamflame.pipeline import shell
from streamflame.pipeline.ingest.consumer import READY_FILE_ENV, IngestConsumer
from streamflame.pipeline.ingest.metrics import serve

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamflame ingest",
        description="Run an ingest consumer: observations -> 48-slot patches (+ DLQ), cursors in Redis.",
    )
    parser.add_argument("--config", help="YAML config (default: $STREAMFLAME_CONFIG or built-in defaults)")
    parser.add_argument("--ready-file", help=f"touch this file once the consumer joined its group (or ${READY_FILE_ENV})")
    args = parser.parse_args(argv)
    cfg, watched = shell.load(args.config)
    if cfg is None:
        return 2
    ingest = IngestConsumer(cfg, ready_file=args.ready_file, config_path=watched)
    return shell.run(ingest, "ingest", cfg, lambda port, host: serve(ingest, port, host))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

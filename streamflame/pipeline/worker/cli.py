"""``streamflame worker``: one model worker process (the shell: :mod:`streamflame.pipeline.shell`)."""
from __future__ import annotations

import argparse
import sys

from streamflame.pipeline import shell
from streamflame.pipeline.worker.worker import Worker

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamflame worker", description=(
        "Run a model worker: consume patches, advance states in Redis, publish forecasts and alerts. "
        "Stops cleanly on SIGTERM/SIGINT. The config file is re-read on SIGHUP and when it changes "
        "(series groups, defaults, log level, batch size/deadline; see docs/configuration.md)."))
    parser.add_argument("--config", help="YAML config file (default: $STREAMFLAME_CONFIG, else built-in defaults)")
    args = parser.parse_args(argv)
    cfg, watched = shell.load(args.config)
    if cfg is None:
        return 2
    worker = Worker(cfg, config_path=watched)
    return shell.run(worker, "worker", cfg, worker.metrics.serve)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The single `streamflame` entry point.

Each sub-command lives next to the code it drives; this table only maps a
command name to ``module:function`` so importing the CLI stays cheap (torch,
kafka and redis are imported only by the command that needs them). Every
target function takes ``argv: list[str]`` and returns an exit code.
"""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function, one-line help)
    "up": ("streamflame.embedded.cli:main_up", "start the embedded stack (broker, redis, ingest, worker)"),
    "down": ("streamflame.embedded.cli:main_down", "stop a detached embedded stack"),
    "status": ("streamflame.tools.status:main", "summarise running ingest/worker processes from their metrics"),
    "demo": ("streamflame.tools.demo:main", "replay a bundled real dataset through the full pipeline and show forecasts"),
    "ingest": ("streamflame.pipeline.ingest.cli:main", "run an ingest consumer (observations -> patches)"),
    "worker": ("streamflame.pipeline.worker.cli:main", "run a model worker (patches -> states, forecasts, alerts)"),
    "replay": ("streamflame.tools.replay:main", "send a CSV/Parquet file of observations to the observations topic"),
    "tail": ("streamflame.tools.tail:main", "print forecasts and alerts as they arrive, one line each"),
    "plot": ("streamflame.tools.plot:main", "fan chart PNG of a series: live stack or an eval forecast file"),
    "config": ("streamflame.config.cli:main", "configuration tools: `config check FILE`"),
    "data": ("streamflame.data.registry:main", "packaged real datasets: `data sources`, `data export-validation FILE`"),
    "train": ("streamflame.train.loop:main", "train a model from a YAML training config"),
    "eval": ("streamflame.eval.run:main", "score forecasts on a CSV/Parquet file (the eval file contract)"),
    "chaos": ("streamflame.faults.chaos:main", "fault injection on the embedded stack: `chaos crash|redis|broker|rebalance`"),
    "bench": ("streamflame.bench:main", "benchmarks: `bench step`, `bench pipeline`, `bench soak`"),
    "fuzz": ("streamflame.faults.fuzz:main", "hostile-input run through the real ingest + worker, checked"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: streamflame COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `streamflame COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"streamflame: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name][0]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        rc = int(func(rest) or 0)
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # The reader went away (`streamflame status --json | head`): what it did not read is
        # dropped, without a traceback; stdout goes to /dev/null so the final flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``streamflame config check FILE`` / ``streamflame config show [FILE]``."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from streamflame.config.errors import ConfigError
from streamflame.config.loading import load_config, load_config_defaults
from streamflame.config.sections import CONFIG_ENV, ENV_PREFIX
from streamflame.config.service import ServiceConfig

# ---------------------------------------------------------------------------
# CLI: streamflame config check FILE | show [FILE]
# ---------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of scalars (quantiles, levels) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def _print_effective(cfg: ServiceConfig, source: str | None) -> None:
    env = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k != CONFIG_ENV and os.environ[k])
    data, notes = cfg.as_file()
    print(f"# effective settings: {source or 'built-in defaults'}")
    if env:
        print("# environment overrides: " + ", ".join(env))
    for note in notes:
        print(f"# {note}")
    print(dump_yaml(data), end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="streamflame config",
        description="Validate a configuration file and print the effective settings "
        "(file + STREAMFLAME_* environment overrides, secrets masked).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{check,show}")
    p_check = sub.add_parser("check", help="validate FILE; print effective settings (exit 0) or errors (exit 2)")
    p_check.add_argument("file")
    p_show = sub.add_parser("show", help="print effective settings of FILE, $STREAMFLAME_CONFIG or the defaults")
    p_show.add_argument("file", nargs="?")
    args = parser.parse_args(argv)

    path = args.file if args.cmd == "check" else (args.file or os.environ.get(CONFIG_ENV) or None)
    try:
        cfg = load_config(path) if path is not None else load_config_defaults()
    except ConfigError as e:
        for p in e.problems:
            print(f"error: {e.source or 'environment'}: {p}", file=sys.stderr)
        return 2
    _print_effective(cfg, path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

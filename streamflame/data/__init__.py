"""Data: regular-grid series, file loading, packaged real datasets and a synthetic generator."""
from .loader import DataError, load_table
from .series import Series, infer_freq, seasonality

__all__ = ["Series", "DataError", "load_table", "infer_freq", "seasonality"]

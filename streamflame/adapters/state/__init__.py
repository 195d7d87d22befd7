"""Per-series worker state in Redis (see :mod:`streamflame.adapters.state.store`)."""

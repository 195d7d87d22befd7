"""Per-series worker state in Redis (see :mod:`streamflame.state.store`)."""

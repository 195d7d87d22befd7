"""Constants shared by every layer (one place each)."""
from __future__ import annotations

PATCH_LEN = 48
"""Observations per patch on the wire. The model's truth is ``ModelConfig.patch_len`` (read from the
checkpoint); this is the pipeline's copy, kept here because importing ``streamflame.model`` pulls in
torch. The worker refuses to start when the checkpoint's ``patch_len`` differs
(:func:`streamflame.pipeline.worker.batch.check_patch_len`), and tests/test_layers.py checks the model's
default against it."""

DEFAULT_QUANTILES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Quantile levels of a forecast when the config (``defaults.quantiles``) or the caller names none."""

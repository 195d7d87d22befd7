"""Cheaper arithmetic for the sampling pass, off by default: ``Forecaster.set_arithmetic(...)``.

    matmul="float32"  exact float32 (default): the published numbers of the model as trained
    matmul="bf16"     the sampling pass under bf16 autocast (CPU with AVX-512 BF16 / AMX, CUDA):
                      matmul inputs and the flow's hidden activations in bf16, the sample path
                      itself (y = y * exp(s) + t) in float32
    matmul="tf32"     CUDA only: float32 matmuls on TF32 tensor cores
    compile=True      torch.compile of the sampling pass (mode "reduce-overhead": CUDA graphs on
                      CUDA) at bucketed batch sizes (powers of two from 16 rows), so a worker's
                      varying batches reuse a handful of compiled graphs

Each changes the published numbers a little; their error against float32 is measured in
tests/test_arithmetic.py and stated in docs/model.md. A series' numbers stay independent of the
batch it lands in on CPU (padding to whole buckets repeats real rows).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

MATMUL_MODES = ("float32", "bf16", "tf32")


@dataclass(frozen=True)
class Arithmetic:
    matmul: str = "float32"
    compile: bool = False

    def __post_init__(self):
        if self.matmul not in MATMUL_MODES:
            raise ValueError(f"matmul must be one of {', '.join(MATMUL_MODES)}, got {self.matmul!r}")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {self.compile!r}")

    @property
    def exact(self) -> bool:
        return self.matmul == "float32" and not self.compile

    def describe(self) -> str:
        return self.matmul + (" + compile" if self.compile else "")

    @contextlib.contextmanager
    def sampling(self, device: torch.device):
        """The context the sampling pass runs in on ``device``."""
        if self.matmul == "float32":
            yield
        elif self.matmul == "bf16":
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yield
        else:                                                        # tf32
            if device.type != "cuda":
                raise ValueError(f"matmul='tf32' needs a CUDA device; this forecaster is on {device}")
            old = torch.backends.cuda.matmul.fp32_precision
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            try:
                yield
            finally:
                torch.backends.cuda.matmul.fp32_precision = old


def bucket(n: int, least: int = 16) -> int:
    """The compiled batch size for n rows: the least power of two >= max(n, least)."""
    b = least
    while b < n:
        b *= 2
    return b

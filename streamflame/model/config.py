"""Model configuration: one frozen dataclass, JSON round-trippable."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from streamflame.core.fields import from_fields


@dataclass(frozen=True)
class ModelConfig:
    # tokens
    patch_len: int = 48          # p: observations per token (FLAME)
    window: int = 1024           # W: raw observations kept for perception (period search, seasonal hints)
    min_period: int = 4          # shortest period the perception looks for
    legt_order: int = 16         # N_T: Legendre coefficients of the environment (LegT memory)
    clip: float = 50.0           # normalised inputs are clipped to +-clip
    norm_memory: float = 64.0    # causal RevIN memory in patches: decay 1 - 1/norm_memory per patch (0 = cumulative)
    # SSD stack (Mamba-2 style, scalar decay per head)
    d_model: int = 192
    n_layers: int = 3
    d_inner: int = 192
    headdim: int = 32
    d_state: int = 8             # N
    d_conv: int = 2              # causal conv over tokens (kernel size; state keeps d_conv - 1 tokens)
    mlp_ratio: int = 4
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    chunk_len: int = 64          # chunk of the parallel scan
    # decoder + flow head
    max_horizon: int = 384       # H_max (any H <= H_max; not only multiples of patch_len)
    basis_order: int = 8         # Legendre basis over future patches (FlowState functional decoder)
    d_cond: int = 128
    flow_layers: int = 5         # K masked affine coupling layers
    flow_hidden: int = 128
    flow_scale_clamp: float = 3.0
    ar_patches: bool = False     # future patch j's flow also sees where patch j-1 ended (FAR-TS-style
                                 # factorised generation: coherent paths across patch boundaries)
    seasonal_memory: bool = False  # the hint is the candidate of lowest tracked error: window seasonal
                                   # naive, day or week profile (model/seasonal.py), not always the first
    hint_features: bool = False    # the flow's condition sees every hint candidate's tracked error
    inner_ar: bool = False         # the flow's base noise is AR(1) inside a patch (model/flow.py): a path
                                   # continued from observed steps keeps the last one's deviation
    carry_ar: bool = False         # with inner_ar and ar_patches: that AR(1) runs on across future patch
                                   # boundaries (a path's deviation does not restart at each boundary)

    def __post_init__(self) -> None:
        problems = []
        if self.d_inner % self.headdim:
            problems.append("d_inner must be a multiple of headdim")
        if self.window < 2 * self.patch_len:
            problems.append("window must hold at least two patches")
        if self.max_horizon < 1:
            problems.append("max_horizon must be >= 1")
        if self.d_conv < 1:
            problems.append("d_conv must be >= 1")
        if self.norm_memory != 0 and self.norm_memory < 1:
            problems.append("norm_memory must be 0 (cumulative) or >= 1 patch")
        if self.carry_ar and not (self.inner_ar and self.ar_patches):
            problems.append("carry_ar needs inner_ar and ar_patches")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.d_state

    @property
    def max_future_patches(self) -> int:
        """Patches the decoder can emit: enough for H_max after a partial patch of p-1 values."""
        return -(-(self.max_horizon + self.patch_len - 1) // self.patch_len)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def identity_json(self) -> str:
        """What the model id hashes (with the weights): to_json without the LATE_FIELDS left off, so
        that adding a lever keeps every existing checkpoint's model_id, and its series' stored states."""
        return json.dumps({k: v for k, v in asdict(self).items()
                           if not (k in LATE_FIELDS and v == LATE_FIELDS[k])}, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return from_fields(cls, d, "ModelConfig")

    @classmethod
    def from_json(cls, s: str) -> "ModelConfig":
        return cls.from_dict(json.loads(s))


# Levers added after checkpoints had shipped, with the value that means "off": while off they stay out of
# the model id (ModelConfig.identity_json). A new lever goes here when it is added (and so becomes one of
# flame.ADDITIVE_FIELDS, which init_from may switch on).
LATE_FIELDS = {"inner_ar": False, "carry_ar": False}


def tiny_config(**overrides) -> ModelConfig:
    """A small config for tests and smoke training (~0.2M parameters)."""
    base = dict(d_model=32, n_layers=2, d_inner=32, headdim=8, d_state=4, window=192,
                legt_order=8, max_horizon=96, basis_order=4, d_cond=32, flow_layers=3,
                flow_hidden=32, mlp_ratio=2, chunk_len=8)
    base.update(overrides)
    return ModelConfig(**base)

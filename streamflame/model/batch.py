"""StateBatch: the states of many series as one contiguous tensor per state field.

The worker's hot path: stored state bytes are decoded row by row straight into preallocated
buffers (pinned when the model is on CUDA), stepped and forecast by ``Forecaster.step_batch`` /
``forecast_batch`` and encoded back, with no ``SeriesState`` per series on the way. The bytes are
SeriesState's (model.state) byte for byte: tests/test_state_batch.py.

    sb = StateBatch.for_forecaster(f, capacity)
    i = sb.append_bytes(data)          # StateDecodeError: this series only (nothing is written)
    sb.seal()                          # the rows into the field tensors
    f.step_batch(sb, patches)          # (n, patch_len)
    fc = f.forecast_batch(sb, None, horizon=96, seeds=seeds)
    blobs = sb.to_bytes()              # == [SeriesState.to_bytes() of each row]

Shapes for n series (``size``) in a batch of ``capacity`` rows:
    tensors[k]          (>= n, *shape_k) per k in STATE_FIELDS, float64 or the model dtype; rows past n
                        are scratch (padding) and never encoded
    n_obs, n_patches    (capacity,) int64 numpy; scale (capacity,) float64 numpy
A batch holds patch-aligned states (empty buffer), as update_many needs. ``meta`` (reserved, empty
today) is not kept: a step drops it as update_many does.
"""
from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass

import numpy as np
import orjson
import torch
from isal.isal_zlib import crc32   # zlib's CRC-32, ~10x faster (pyproject.toml)

from .flame import STATE_FIELDS
from .state import FORMAT_VERSION, MAGIC, MAX_STATE_BYTES, SeriesState, StateDecodeError, _dtype_name

_LITTLE = sys.byteorder == "little"
_HEAD = struct.Struct("<4sHI")
_VERSION_HLEN = struct.Struct("<HI")
# the header's varying middle as orjson reads it: non-negative integers without a leading zero
_COUNTS = re.compile(rb'(0|[1-9][0-9]{0,17}),"n_patches":(0|[1-9][0-9]{0,17}),"scale":([-+.0-9eE]{1,32})')
_CRC = struct.Struct("<I")


@dataclass(frozen=True)
class EncodedState:
    """A state kept as its wire bytes, written by this process (the worker's cache of its own
    records): decoded again without the checksum check. ``detached`` is itself (bytes are immutable)."""
    data: bytes

    def detached(self) -> "EncodedState":
        return self


@dataclass(frozen=True)
class _Field:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int        # byte offset in the body
    nbytes: int        # bytes per series


class StateLayout:
    """The wire layout of one model's patch-aligned state: every STATE_FIELDS field in that
    order, then an empty buffer; the header differs between series only in n_obs, n_patches, scale."""

    def __init__(self, model_id: str, dtype: str, empty: dict[str, np.ndarray]):
        self.model_id, self.dtype, self.empty = model_id, dtype, empty
        fields, off = [], 0
        for k in STATE_FIELDS:
            a = empty[k]
            fields.append(_Field(k, a.dtype, a.shape, off, a.nbytes))
            off += a.nbytes
        self.fields = tuple(fields)
        self.body = off
        self.specs = [[f.name, _dtype_name(f.dtype), list(f.shape)] for f in fields] + [["buffer", dtype, [0]]]
        h = self.header(0, 0, 1.0, self.specs)
        a, b = h.index(b'"n_obs":0,'), h.index(b',"tensors":')
        self._head, self._tail = h[:a + 8], h[b:]
        self._scales: dict[float, bytes] = {}                  # scale -> its JSON
        self._scale_of: dict[bytes, float] = {}                # and back
        assert self._header(7, 3, 0.5) == self.header(7, 3, 0.5, self.specs), "header template"

    def header(self, n_obs: int, n_patches: int, scale: float, specs: list) -> bytes:
        """The header as SeriesState.to_bytes writes it (the reference; used for odd rows)."""
        return orjson.dumps({"model_id": self.model_id, "dtype": self.dtype, "n_obs": int(n_obs),
                             "n_patches": int(n_patches), "scale": float(scale), "meta": {},
                             "tensors": specs}, option=orjson.OPT_SORT_KEYS)

    def _header(self, n_obs: int, n_patches: int, scale: float) -> bytes:
        s = self._scales.get(scale)
        if s is None:
            if len(self._scales) > 4096:
                self._scales.clear()
            s = self._scales[scale] = orjson.dumps(scale)
        return b"%s%d,\"n_patches\":%d,\"scale\":%s%s" % (self._head, n_obs, n_patches, s, self._tail)

    def parse(self, data: bytes, a: int, b: int) -> tuple[int, int, float] | None:
        """(n_obs, n_patches, scale) of the header in data[a:b] when it is this layout's template
        (this model and dtype, no meta, the canonical fields), read as orjson would read it;
        None for anything else (the reference decoder then judges it)."""
        head, tail = self._head, self._tail
        if not (data.startswith(head, a) and data.endswith(tail, a, b)):
            return None
        m = _COUNTS.fullmatch(data, a + len(head), b - len(tail))
        if m is None:
            return None
        obs, pat, sc = m.groups()
        scale = self._scale_of.get(sc)
        if scale is None:
            try:
                v = orjson.loads(sc)
            except orjson.JSONDecodeError:
                return None
            if type(v) not in (int, float):
                return None
            scale = float(v)
            if len(self._scale_of) > 4096:
                self._scale_of.clear()
            self._scale_of[sc] = scale
        return int(obs), int(pat), scale


class StateBatch:
    """Up to ``capacity`` series' states; see the module docstring for the shapes."""

    def __init__(self, layout: StateLayout, capacity: int, device: torch.device | str = "cpu"):
        self.layout = layout
        self.capacity = int(capacity)
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        self._staging = torch.empty((self.capacity, layout.body), dtype=torch.uint8, pin_memory=pin).numpy()
        self._flat = memoryview(self._staging.reshape(-1))     # row i = [i * body, (i + 1) * body)
        self._host = {f.name: torch.empty((self.capacity, *f.shape), dtype=_torch_dtype(f.dtype), pin_memory=pin)
                      for f in layout.fields}
        self.n_obs = np.zeros(self.capacity, np.int64)
        self.n_patches = np.zeros(self.capacity, np.int64)
        self.scale = np.ones(self.capacity, np.float64)
        self._odd: dict[int, list] = {}         # row -> buffer spec when not [model dtype, [0]]
        self.tensors: dict[str, torch.Tensor] = {}
        self.size = 0
        self._sealed = False

    @classmethod
    def for_forecaster(cls, f, capacity: int) -> "StateBatch":
        """A batch for Forecaster ``f`` on its device."""
        return cls(StateLayout(f.model_id, f.dtype, f.init_state().tensors), capacity, f.device)

    def clear(self) -> None:
        """Empty the batch for reuse (its buffers are kept)."""
        self.size, self._sealed, self.tensors = 0, False, {}
        self._odd.clear()

    # ---- filling ---------------------------------------------------------------------------
    def _next_row(self) -> int:
        if self._sealed:
            raise RuntimeError("the batch is sealed; clear() it to fill it again")
        if self.size >= self.capacity:
            raise ValueError(f"the batch is full ({self.capacity} series)")
        return self.size

    def append_bytes(self, data, verify: bool = True) -> int:
        """Decode one series' stored bytes into the next row; returns the row. Raises
        StateDecodeError (nothing written) where ``SeriesState.from_bytes`` would, and for a state
        of another model or dtype, a partial patch or fields of the wrong shape. ``verify=False``
        skips the checksum (bytes this process encoded itself)."""
        i = self._next_row()
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise StateDecodeError(f"state must be bytes, got {type(data).__name__}")
            data = bytes(data)
        lay, n = self.layout, len(data)
        if 14 <= n <= MAX_STATE_BYTES and data.startswith(MAGIC):
            version, hlen = _VERSION_HLEN.unpack_from(data, 4)
            start = 10 + hlen
            if (version == FORMAT_VERSION and start + lay.body + 4 == n
                    and (not verify or crc32(memoryview(data)[:-4]) == _CRC.unpack_from(data, n - 4)[0])):
                counts = lay.parse(data, 10, start)
                if counts is not None:
                    self._flat[i * lay.body:(i + 1) * lay.body] = memoryview(data)[start:n - 4]
                    self.n_obs[i], self.n_patches[i], self.scale[i] = counts
                    self.size = i + 1
                    return i
        return self.append_state(SeriesState.from_bytes(data))   # anything else: the reference decoder

    def append_encoded(self, enc: EncodedState) -> int:
        """A state this process encoded (``EncodedState``): decoded without the checksum check."""
        return self.append_bytes(enc.data, verify=False)

    def append_state(self, st: SeriesState) -> int:
        """One SeriesState's arrays into the next row (fields it predates take init_state's
        values, as update_many does); returns the row."""
        i = self._next_row()
        lay = self.layout
        self._check_model(st.model_id)
        if st.dtype != lay.dtype:
            raise StateDecodeError(f"state dtype {st.dtype} does not match the forecaster's {lay.dtype}")
        if len(st.buffer):
            raise StateDecodeError(f"stored state holds a partial patch of {len(st.buffer)} values")
        parts = []
        for f in lay.fields:
            a = st.tensors.get(f.name, lay.empty[f.name])
            a = np.asarray(a)
            if a.shape != f.shape or _dtype_name(a.dtype) != _dtype_name(f.dtype):
                raise StateDecodeError(f"tensor {f.name!r} is {_dtype_name(a.dtype)} {list(a.shape)}; this model "
                                       f"keeps {_dtype_name(f.dtype)} {list(f.shape)}")
            parts.append(np.ascontiguousarray(a, dtype=f.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
        self._staging[i] = np.concatenate(parts)
        buf = [_dtype_name(st.buffer.dtype), list(st.buffer.shape)]
        if buf != lay.specs[-1][1:]:
            self._odd[i] = buf
        self.n_obs[i], self.n_patches[i], self.scale[i] = st.n_obs, st.n_patches, st.scale
        self.size = i + 1
        return i

    def _check_model(self, model_id: str) -> None:
        if model_id != self.layout.model_id:
            raise StateDecodeError(f"state bytes belong to model {model_id}, this batch holds {self.layout.model_id}")

    def seal(self) -> None:
        """The filled rows into the field tensors (one copy per field), on the batch's device."""
        if self._sealed:
            return
        n = self.size
        for f in self.layout.fields:
            t = self._host[f.name]
            dst = t.numpy()[:n].reshape(n, f.nbytes // f.dtype.itemsize)
            src = self._staging[:n, f.offset:f.offset + f.nbytes]
            if _LITTLE:
                dst.view(np.uint8)[:] = src
            else:
                dst[:] = src.copy().view(f.dtype.newbyteorder("<"))
            # on a device only the filled rows travel (gather pads there by index_select)
            self.tensors[f.name] = t if self.device.type == "cpu" else t[:n].to(self.device, non_blocking=True)
        self._sealed = True

    # ---- rows ------------------------------------------------------------------------------
    def gather(self, rows, m: int) -> dict[str, torch.Tensor]:
        """The states of ``rows`` stacked into (m, ...) tensors, m >= len(rows): the extra rows
        repeat the first (the padding of the batched model calls)."""
        self.seal()
        rows = list(rows)
        n = len(rows)
        if n and not (0 <= min(rows) and max(rows) < self.size):
            raise IndexError(f"rows {min(rows)}..{max(rows)} of a batch of {self.size}")
        if n and rows == list(range(rows[0], rows[0] + n)):
            a = rows[0]
            if m == n:                                    # a run of rows: views, no copy
                return {k: t[a:a + n] for k, t in self.tensors.items()}
            if a == 0 and n == self.size and all(t.shape[0] >= m for t in self.tensors.values()):
                out = {}
                for k, t in self.tensors.items():        # pad in the scratch rows
                    t[n:m] = t[0]
                    out[k] = t[:m]
                return out
        idx = torch.tensor(rows + rows[:1] * (m - n), dtype=torch.long, device=self.device)
        return {k: t.index_select(0, idx) for k, t in self.tensors.items()}

    def put(self, rows, new: dict[str, torch.Tensor]) -> None:
        """Write (len(rows), ...) new field values into ``rows`` (a step's results)."""
        rows = list(rows)
        n = len(rows)
        if len(set(rows)) != n:
            raise ValueError("each row at most once in a step")
        if rows == list(range(self.size)):
            self.tensors = dict(new)                     # the whole batch: take the new tensors
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        for k, t in self.tensors.items():
            src = new[k][:n]
            if src.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
                src = src.clone()      # a field the step passed through: a view of these very rows (gather)
            t.index_copy_(0, idx, src)

    # ---- encoding --------------------------------------------------------------------------
    def to_bytes(self, rows=None) -> list[bytes]:
        """Each row's stored bytes, equal to ``SeriesState.to_bytes()`` of the same state."""
        self.seal()
        n = self.size
        lay, st = self.layout, self._staging
        for f in lay.fields:
            t = self.tensors[f.name][:n]
            if t.device.type != "cpu":
                t = self._host[f.name][:n].copy_(t)
            a = t.numpy().reshape(n, f.nbytes // f.dtype.itemsize)
            st[:n, f.offset:f.offset + f.nbytes] = a.view(np.uint8) if _LITTLE else a.astype(
                f.dtype.newbyteorder("<")).view(np.uint8)
        out = []
        head = _HEAD.pack
        n_obs, n_patches, scale = self.n_obs.tolist(), self.n_patches.tolist(), self.scale.tolist()
        for i in (range(n) if rows is None else rows):
            odd = self._odd.get(i)
            h = (lay._header(n_obs[i], n_patches[i], scale[i]) if odd is None else
                 lay.header(n_obs[i], n_patches[i], scale[i], lay.specs[:-1] + [["buffer", *odd]]))
            pre = head(MAGIC, FORMAT_VERSION, len(h)) + h
            body = memoryview(st[i])
            out.append(b"".join((pre, body, _CRC.pack(crc32(body, crc32(pre))))))
        return out

    def state(self, i: int) -> SeriesState:
        """Row ``i`` as a SeriesState (its own arrays): the single-series view."""
        self.seal()
        if not 0 <= i < self.size:
            raise IndexError(f"row {i} of a batch of {self.size}")
        tensors = {k: t[i].cpu().numpy().copy() for k, t in self.tensors.items()}
        odd = self._odd.get(i)
        buffer = np.zeros(odd[1], dtype=odd[0]) if odd else np.zeros(0, dtype=self.layout.dtype)
        return SeriesState(self.layout.model_id, self.layout.dtype, tensors, buffer, int(self.n_obs[i]),
                           int(self.n_patches[i]), float(self.scale[i]))


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dt)).dtype

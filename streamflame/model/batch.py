"""StateBatch: the states of many series as one contiguous tensor per state field.

The worker's hot path: the stored bytes of a batch are decoded together straight into
preallocated field arrays (pinned when the model is on CUDA; model/state_bulk.py), stepped and
forecast by ``Forecaster.step_batch`` / ``forecast_batch`` and encoded back into one buffer, with
no ``SeriesState`` per series on the way. The bytes are SeriesState's (model.state) byte for
byte: tests/test_state_batch.py, tests/test_state_bulk.py.

    sb = StateBatch.for_forecaster(f, capacity)
    got = sb.append_many(datas)        # per input its row, or the StateDecodeError of that one only
    i = sb.append_bytes(data)          # one: StateDecodeError raised (nothing is written)
    sb.seal()                          # the rows onto the batch's device
    f.step_batch(sb, patches)          # (n, patch_len)
    fc = f.forecast_batch(sb, None, horizon=96, seeds=seeds)
    views = sb.encode()                # read-only memoryviews, == [SeriesState.to_bytes() of each row]
    blobs = sb.to_bytes()              # the same as bytes objects

Shapes for n series (``size``) in a batch of ``capacity`` rows:
    tensors[k]          (>= n, *shape_k) per k in STATE_FIELDS, float64 or the model dtype; rows past n
                        are scratch (padding) and never encoded. On the CPU a decoded batch's fields
                        are strided views of one row-major (capacity, body) store, a row = one
                        state's stored body (one copy per state to decode); after a step, the
                        step's own tensors
    n_obs, n_patches    (capacity,) int64 numpy; scale (capacity,) float64 numpy
A batch holds patch-aligned states (empty buffer), as update_many needs. ``meta`` (reserved, empty
today) is not kept: a step drops it as update_many does.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import torch

from . import state_bulk
from .state_bulk import StateLayout
from .state import SeriesState, StateDecodeError, _dtype_name

_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True)
class EncodedState:
    """A state kept as its wire bytes, written by this process (the worker's cache of its own
    records): decoded again without the checksum check. ``data`` is bytes or a read-only
    memoryview into the buffer of ``StateBatch.encode``; ``detached`` owns its bytes."""
    data: bytes | memoryview

    def detached(self) -> "EncodedState":
        """Itself when ``data`` is bytes; else a copy, so a long-kept state does not keep its
        whole batch's buffer alive."""
        return self if type(self.data) is bytes else EncodedState(bytes(self.data))


class StateBatch:
    """Up to ``capacity`` series' states; see the module docstring for the shapes."""

    def __init__(self, layout: StateLayout, capacity: int, device: torch.device | str = "cpu"):
        self.layout = layout
        self.capacity = int(capacity)
        self.device = torch.device(device)
        pin = self.device.type == "cuda"
        # row-major storage, a row = one state's body (as stored); each field a strided view of it,
        # so a decoded body is one copy (the same numbers: tests/test_state_batch.py)
        self._stride = -(-layout.body // 8) * 8
        self._rows = torch.empty((self.capacity, self._stride), dtype=torch.uint8, pin_memory=pin)
        rows = self._rows.numpy()
        self._flat = memoryview(rows.reshape(-1))
        self._host = {f.name: torch.from_numpy(rows[:, f.offset:f.offset + f.nbytes].view(f.dtype)
                                               .reshape(self.capacity, *f.shape)) for f in layout.fields}
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

    def append_many(self, datas: list, verify: bool | list[bool] = True) -> list[int | StateDecodeError]:
        """Decode many series' stored bytes into the next rows: per input its row, or the
        StateDecodeError that ``append_bytes`` would raise for it (that input only: nothing of it
        is written). The canonical states are decoded together (model/state_bulk.py) into the next
        rows in input order, any other by the reference decoder into the rows after them.
        ``verify`` (one for all or one per input): False skips the checksum (bytes this process
        encoded itself). ValueError when the batch has fewer free rows than inputs."""
        given = list(datas)
        if given:
            self._next_row()
        if self.size + len(given) > self.capacity:
            raise ValueError(f"the batch is full ({self.capacity} series, {self.size} filled, {len(given)} more)")
        plain = all(map(isinstance, given, repeat(bytes)))
        datas = given if plain else [_bytes_like(d) for d in given]
        n = len(datas)
        check = np.full(n, verify, bool) if isinstance(verify, bool) else np.array(verify, bool).reshape(n)
        taken = state_bulk.decode_into(self.layout, datas if plain else [b"" if d is None else d for d in datas],
                                       check, self._flat, self._stride, self.size)
        k, a = len(taken.n_obs), self.size
        self.n_obs[a:a + k], self.n_patches[a:a + k], self.scale[a:a + k] = taken.n_obs, taken.n_patches, taken.scale
        if not _LITTLE:
            for t in self._host.values():
                t.numpy()[a:a + k].byteswap(inplace=True)
        self.size = a + k
        out: list[int | StateDecodeError] = taken.rows.tolist()
        for j in np.flatnonzero(taken.rows < 0).tolist():    # anything else: the reference decoder
            try:
                if datas[j] is None:
                    raise StateDecodeError(f"state must be bytes, got {type(given[j]).__name__}")
                out[j] = self.append_state(SeriesState.from_bytes(datas[j]))
            except StateDecodeError as e:
                out[j] = e
        return out

    def append_bytes(self, data, verify: bool = True) -> int:
        """Decode one series' stored bytes into the next row; returns the row. Raises
        StateDecodeError (nothing written) where ``SeriesState.from_bytes`` would, and for a state
        of another model or dtype, a partial patch or fields of the wrong shape. ``verify=False``
        skips the checksum (bytes this process encoded itself)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            self._next_row()
            raise StateDecodeError(f"state must be bytes, got {type(data).__name__}")
        got = self.append_many([data], verify)[0]
        if isinstance(got, StateDecodeError):
            raise got
        return got

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
        arrays = []
        for f in lay.fields:
            a = np.asarray(st.tensors.get(f.name, lay.empty[f.name]))
            if a.shape != f.shape or _dtype_name(a.dtype) != _dtype_name(f.dtype):
                raise StateDecodeError(f"tensor {f.name!r} is {_dtype_name(a.dtype)} {list(a.shape)}; this model "
                                       f"keeps {_dtype_name(f.dtype)} {list(f.shape)}")
            arrays.append(a)
        for f, a in zip(lay.fields, arrays):
            self._host[f.name].numpy()[i] = a
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
        """The filled rows as the field tensors: the host arrays themselves on the CPU, a copy of
        the filled rows on another device."""
        if self._sealed:
            return
        n = self.size
        if self.device.type == "cpu":
            self.tensors = dict(self._host)
        else:       # only the filled rows travel, in one piece (gather pads there by index_select)
            self.tensors = split_rows(self.layout, self._rows[:n].to(self.device, non_blocking=True))
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
    def encode(self, rows=None) -> list[memoryview]:
        """Each row's stored bytes (``rows``: default all, in order; a row may repeat), equal to
        ``SeriesState.to_bytes()`` of the same state: read-only memoryviews of one new buffer
        (model/state_bulk.py), which they keep alive (``EncodedState.detached`` copies one out)."""
        self.seal()
        n = self.size
        rows = list(range(n)) if rows is None else [int(r) for r in rows]
        if not rows:
            return []
        if not (0 <= min(rows) and max(rows) < n):
            raise IndexError(f"rows {min(rows)}..{max(rows)} of a batch of {n}")
        run = rows == list(range(rows[0], rows[0] + len(rows)))
        sel = slice(rows[0], rows[0] + len(rows)) if run else np.asarray(rows, np.int64)
        src = {}
        for f in self.layout.fields:
            t = self.tensors[f.name][:n]
            if t.device.type != "cpu":
                t = self._host[f.name][:n].copy_(t)
            a = t.numpy()[sel].reshape(len(rows), -1)
            src[f.name] = (a if _LITTLE else a.astype(f.dtype.newbyteorder("<"))).view(np.uint8)
        lay, odd = self.layout, {}
        for j, i in enumerate(rows if self._odd else ()):
            if i in self._odd:
                odd[j] = lay.header(self.n_obs[i], self.n_patches[i], self.scale[i],
                                    lay.specs[:-1] + [["buffer", *self._odd[i]]])
        return state_bulk.encode(lay, src, self.n_obs[sel], self.n_patches[sel], self.scale[sel], odd)

    def to_bytes(self, rows=None) -> list[bytes]:
        """``encode`` as bytes objects."""
        return [bytes(v) for v in self.encode(rows)]

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


def split_rows(layout: StateLayout, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """(n, >= body) uint8 rows of stored bodies -> each field as its own contiguous (n, *shape)
    tensor on the rows' device (little-endian hosts)."""
    n = rows.shape[0]
    return {f.name: rows[:, f.offset:f.offset + f.nbytes].contiguous().view(_torch_dtype(f.dtype)).reshape(n, *f.shape)
            for f in layout.fields}


def _bytes_like(d):
    """d as a flat bytes-like object the decoders read byte by byte; None for anything else."""
    if isinstance(d, memoryview) and (d.itemsize != 1 or d.ndim != 1 or not d.c_contiguous):
        return d.tobytes()
    return d if isinstance(d, (bytes, bytearray, memoryview)) else None


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dt)).dtype

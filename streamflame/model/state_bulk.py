"""Many stored states at once: model.state's wire format read and written with a few numpy calls
per batch, not a few Python calls per series (StateBatch's hot path, model/batch.py).

Only a state in its layout's canonical form takes this path (``StateLayout``: this model and
dtype, the fields in STATE_FIELDS order, an empty buffer, no meta, the header as SeriesState
writes it); StateBatch hands every other one to the reference decoder (SeriesState.from_bytes).
The bytes are SeriesState's byte for byte: tests/test_state_bulk.py, tests/test_state_batch.py.

decode: one ``crc32`` per state over the whole record (a record followed by its own CRC-32 leaves
the constant residue CRC_RESIDUE: no slicing); per length of state (1-3 in a batch: the header
differs only in the digits of n_obs, n_patches and scale) the headers gathered into one (k, w)
array: template compare, the counts parsed from the digits; then each body copied once, straight
into its row of the batch's row-major storage (C-level map, no Python per state).
encode: one (n, W) buffer; each record ends at the end of its row, so the body starts at one
column P in every row (one strided copy per field); the header's varying middle is written
right-aligned from digit arrays; one ``crc32`` per record; read-only memoryviews of the records.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from itertools import repeat
from operator import getitem
from typing import Sequence

import numpy as np
import orjson
from isal.isal_zlib import crc32   # zlib's CRC-32, ~10x faster (pyproject.toml)

from .flame import STATE_FIELDS
from .state import FORMAT_VERSION, MAGIC, _dtype_name

CRC_RESIDUE = 0x2144DF1C             # crc32(m + le32(crc32(m))) for any m (CRC-32/ISO-HDLC)
_POW10 = 10 ** np.arange(19, dtype=np.int64)
_DIGITS = 18                         # n_obs / n_patches: at most 18 digits, as the reference fast path read them
_SCALE_MAX = 32                      # characters of the scale's JSON number
_N_PATCHES = np.frombuffer(b',"n_patches":', np.uint8)
_SCALE = np.frombuffer(b',"scale":', np.uint8)
_MID_MIN = 1 + len(_N_PATCHES) + 1 + len(_SCALE) + 1
_MID_MAX = _DIGITS + len(_N_PATCHES) + _DIGITS + len(_SCALE) + _SCALE_MAX
_SCALE_CHARS = np.zeros(256, bool)
_SCALE_CHARS[np.frombuffer(b"-+.0123456789eE", np.uint8)] = True
_LEN = struct.Struct("<HI")


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
        self.head, self.tail = h[:a + 8], h[b:]               # the template around n_obs .. scale
        self.head_u8, self.tail_u8 = np.frombuffer(self.head, np.uint8), np.frombuffer(self.tail, np.uint8)
        self._scale_of: dict[bytes, float] = {}                # a scale's JSON -> its value
        self._templates: dict[int, np.ndarray] = {}            # header length -> its bytes (see template)

    def template(self, hlen: int) -> np.ndarray:
        """(10 + hlen,) uint8: a record's first bytes up to its body when its header has ``hlen``
        bytes, the varying middle (n_obs .. scale) zero."""
        t = self._templates.get(hlen)
        if t is None:
            m = hlen - len(self.head) - len(self.tail)
            t = self._templates[hlen] = np.frombuffer(
                MAGIC + struct.pack("<HI", FORMAT_VERSION, hlen) + self.head + bytes(m) + self.tail, np.uint8)
        return t

    def header(self, n_obs: int, n_patches: int, scale: float, specs: list) -> bytes:
        """The header as SeriesState.to_bytes writes it (the reference; used for odd rows)."""
        return orjson.dumps({"model_id": self.model_id, "dtype": self.dtype, "n_obs": int(n_obs),
                             "n_patches": int(n_patches), "scale": float(scale), "meta": {},
                             "tensors": specs}, option=orjson.OPT_SORT_KEYS)

    @staticmethod
    def scale_json(scale: float) -> bytes:
        """The scale as the header holds it."""
        return orjson.dumps(float(scale))

    def scale_of(self, text: bytes) -> float:
        """The value orjson reads from a scale's JSON; NaN where it reads no number."""
        v = self._scale_of.get(text)
        if v is None:
            try:
                x = orjson.loads(text)
            except orjson.JSONDecodeError:
                x = None
            v = float(x) if type(x) in (int, float) else float("nan")
            if len(self._scale_of) > 4096:
                self._scale_of.clear()
            self._scale_of[text] = v
        return v


@dataclass(frozen=True)
class Taken:
    """What ``decode_into`` read: ``rows`` (n,) int64, each input's row (-1: not taken, for the
    reference decoder), and for the ``k`` taken ones, in row order from row0, their counts."""
    rows: np.ndarray
    n_obs: np.ndarray        # (k,) int64
    n_patches: np.ndarray    # (k,) int64
    scale: np.ndarray        # (k,) float64


def decode_into(lay: StateLayout, datas: Sequence, verify: np.ndarray, rows_out: memoryview, stride: int,
                row0: int) -> Taken:
    """Decode the canonical states among ``datas`` (bytes-like, 1-byte items) into rows row0,
    row0 + 1, ... (in input order) of ``rows_out``: the batch's row-major state storage, flat
    (row r = [r * stride, r * stride + body), the body's little-endian bytes). verify (n,) bool:
    check that state's CRC (False: bytes this process wrote)."""
    n, body = len(datas), lay.body
    lens = np.fromiter(map(len, datas), np.int64, n)
    fixed = 14 + body + len(lay.head) + len(lay.tail)
    cand = (lens >= fixed + _MID_MIN) & (lens <= fixed + _MID_MAX)
    check = np.flatnonzero(cand & verify)
    if len(check):
        crcs = np.fromiter(map(crc32, [datas[i] for i in check.tolist()]), np.int64, len(check))
        cand[check[crcs != CRC_RESIDUE]] = False
    idx = np.flatnonzero(cand)
    obs, pat, scale = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.float64)
    for L in np.unique(lens[idx]).tolist():     # per length of state (1-3 in a batch)
        group = idx[lens[idx] == L]
        hlen = L - 14 - body
        # the headers alone, gathered into one (k, 10 + hlen) array (the bodies are not copied here)
        heads = b"".join(map(getitem, [datas[i] for i in group.tolist()], repeat(slice(0, 10 + hlen))))
        ok, (o, p_, sc) = _check_block(lay, np.frombuffer(heads, np.uint8).reshape(len(group), 10 + hlen))
        cand[group[~ok]] = False
        obs[group], pat[group], scale[group] = o, p_, sc
    took = np.flatnonzero(cand)
    rows = np.full(n, -1, np.int64)
    rows[took] = np.arange(row0, row0 + len(took))
    if len(took):                               # each body straight into its row: one copy, in C
        at = (rows[took] * stride).tolist()
        src = [datas[i] for i in took.tolist()]
        starts = (lens[took] - 4 - body).tolist()
        deque(map(rows_out.__setitem__, map(slice, at, [a + body for a in at]),
                  map(getitem, map(memoryview, src), map(slice, starts, [s + body for s in starts]))), maxlen=0)
    return Taken(rows, obs[took], pat[took], scale[took])


def _check_block(lay: StateLayout, hdr: np.ndarray) -> tuple[np.ndarray, tuple]:
    """hdr (k, 10 + hlen): the first bytes up to the body of k records of one length. (ok (k,),
    (n_obs, n_patches, scale)): ok where the record is this layout's canonical form, read as
    orjson would read its header."""
    k, w = hdr.shape
    hlen = w - 10
    a, b = 10 + len(lay.head), 10 + hlen - len(lay.tail)       # the varying middle
    want = lay.template(hlen)
    same = np.bitwise_xor(hdr, want)
    same[:, a:b] = 0
    ok = ~same.any(1)
    obs, pat, scale = np.zeros(k, np.int64), np.zeros(k, np.int64), np.full(k, np.nan)
    mid = hdr[:, a:b]
    todo = np.flatnonzero(ok)
    while len(todo):                 # per shape of the middle (where its commas are): 1 in most blocks
        first = todo[0]
        shape = _Shape.of(mid[first].tobytes())
        if shape is None:
            ok[first] = False
            todo = todo[1:]
            continue
        rows = slice(None) if len(todo) == k else todo
        good, o, p_, sc = shape.read(lay, mid[rows])
        obs[rows], pat[rows], scale[rows], ok[rows] = o, p_, sc, good
        rest = todo[~good]
        todo = rest[rest != first]   # the others: another shape (the first row's own shape decides it)
    return ok & ~np.isnan(scale), (obs, pat, scale)


@dataclass(frozen=True)
class _Shape:
    """Where the pieces of a header's middle sit: D1 = [0, c1), D2 = [s2, c2), S = [s3, m)."""
    c1: int
    s2: int
    c2: int
    s3: int
    m: int

    @staticmethod
    def of(text: bytes) -> "_Shape | None":
        c1 = text.find(b",")
        c2 = text.find(b",", c1 + 1)
        if c1 < 0 or c2 < 0:
            return None
        return _Shape(c1, c1 + len(_N_PATCHES), c2, c2 + len(_SCALE), len(text))

    def read(self, lay: StateLayout, mid: np.ndarray):
        """mid (k, m) of this shape? (ok, n_obs, n_patches, scale) of each row: ``D1,"n_patches":D2,
        "scale":S`` with D1, D2 JSON non-negative integers of at most 18 digits, S a JSON number of at
        most 32 characters, read as orjson reads it."""
        c1, s2, c2, s3, m = self.c1, self.s2, self.c2, self.s3, self.m
        if not (1 <= c1 <= _DIGITS and 1 <= c2 - s2 <= _DIGITS and 1 <= m - s3 <= _SCALE_MAX):
            z = np.zeros(len(mid), np.int64)
            return np.zeros(len(mid), bool), z, z, np.full(len(mid), np.nan)
        ok = (mid[:, c1:s2] == _N_PATCHES).all(1) & (mid[:, c2:s3] == _SCALE).all(1)
        d1, d2, text = mid[:, :c1], mid[:, s2:c2], mid[:, s3:]
        ok &= ((d1 - 48) < 10).all(1) & ((d2 - 48) < 10).all(1) & _SCALE_CHARS[text].all(1)
        if c1 > 1:
            ok &= d1[:, 0] != 48            # no leading zero
        if c2 - s2 > 1:
            ok &= d2[:, 0] != 48
        obs = d1 @ _POW10[c1 - 1::-1] - 48 * int(_POW10[:c1].sum())
        pat = d2 @ _POW10[c2 - s2 - 1::-1] - 48 * int(_POW10[:c2 - s2].sum())
        if (text == text[0]).all():
            scale = np.full(len(mid), lay.scale_of(text[0].tobytes()))
        else:
            uniq, inv = np.unique(np.ascontiguousarray(text).view(f"V{m - s3}").ravel(), return_inverse=True)
            scale = np.array([lay.scale_of(u.tobytes()) for u in uniq], np.float64)[inv.reshape(-1)]
        return ok, obs, pat, scale


def encode(lay: StateLayout, src: dict[str, np.ndarray], n_obs: np.ndarray, n_patches: np.ndarray,
           scale: np.ndarray, headers: dict[int, bytes]) -> list[memoryview]:
    """n records: src field name -> (n, nbytes) uint8 (little-endian values), n_obs / n_patches
    (n,) int64, scale (n,) float64; ``headers``: row -> its whole header where it is not the
    template (another buffer spec; counts outside 0..10**18 - 1). Read-only memoryviews of one
    new buffer, each equal to SeriesState.to_bytes() of its row."""
    n, body = len(n_obs), lay.body
    head, tail = lay.head_u8, lay.tail_u8
    lh, lt = len(head), len(tail)
    top = int(_POW10[18])
    if n and (n_obs.min() < 0 or n_obs.max() >= top or n_patches.min() < 0 or n_patches.max() >= top):
        for i in np.flatnonzero((n_obs < 0) | (n_obs >= top) | (n_patches < 0) | (n_patches >= top)).tolist():
            headers.setdefault(i, lay.header(int(n_obs[i]), int(n_patches[i]), float(scale[i]), lay.specs))
    ob, pa = n_obs, n_patches
    if headers:                           # odd rows: the template is written with 0 and overwritten
        ob, pa = ob.copy(), pa.copy()
        ob[list(headers)] = pa[list(headers)] = 0
    nd1 = np.searchsorted(_POW10[1:], ob, "right") + 1      # digits
    nd2 = np.searchsorted(_POW10[1:], pa, "right") + 1
    bits = scale.view(np.int64)
    if n and (bits == bits[0]).all():
        sj, inv = [lay.scale_json(float(scale[0]))], np.zeros(n, np.int64)
    else:
        bits, inv = np.unique(bits, return_inverse=True)
        sj, inv = [lay.scale_json(x) for x in bits.view(np.float64).tolist()], inv.reshape(-1)
    ls = np.array([len(x) for x in sj], np.int64)[inv]
    hlen = lh + nd1 + len(_N_PATCHES) + nd2 + len(_SCALE) + ls + lt
    P = 10 + int(hlen.max(initial=lh + lt + _MID_MIN))      # every row's body starts here
    for i, h in headers.items():
        hlen[i] = len(h)
    P = max(P, 10 + int(hlen.max(initial=0)))
    W = P + body + 4
    out = np.empty((n, W), np.uint8)
    E = P - lt                            # where the middle ends and the tail starts
    out[:, E:P] = tail
    scales = np.frombuffer(b"".join(x.rjust(_SCALE_MAX, b"\0") for x in sj), np.uint8).reshape(-1, _SCALE_MAX)
    # the header up to the tail, per shape of the middle (digits of n_obs and n_patches, length of
    # the scale): fixed columns in each shape; 1-3 shapes in a batch
    key = (nd1 * 64 + nd2) * 64 + ls
    if n and (key == key[0]).all():
        kinds, which = key[:1], None
    else:
        kinds, which = np.unique(key, return_inverse=True)
    for g, kk in enumerate(kinds.tolist()):
        a1, a2, a3 = kk // 4096, kk // 64 % 64, kk % 64
        ri = slice(None) if which is None else np.flatnonzero(which.reshape(-1) == g)
        pieces = [(ob[ri], a1), (_N_PATCHES, len(_N_PATCHES)), (pa[ri], a2), (_SCALE, len(_SCALE)),
                  (scales[inv[ri], _SCALE_MAX - a3:], a3)]
        m = a1 + len(_N_PATCHES) + a2 + len(_SCALE) + a3
        h = np.empty((len(pieces[0][0]), 10 + lh + m), np.uint8)
        h[:, :10] = np.frombuffer(MAGIC + _LEN.pack(FORMAT_VERSION, lh + m + lt), np.uint8)
        h[:, 10:10 + lh] = head
        c = 10 + lh
        for x, w in pieces:
            # integers as ASCII digits: numpy's own conversion to w-character strings
            h[:, c:c + w] = x.astype(f"S{w}").view(np.uint8).reshape(-1, w) if x.dtype == np.int64 else x
            c += w
        out[ri, E - c:E] = h
    for i, h in headers.items():          # the odd rows: their whole header
        out[i, P - 10 - len(h):P] = np.frombuffer(MAGIC + _LEN.pack(FORMAT_VERSION, len(h)) + h, np.uint8)
    for f in lay.fields:
        out[:, P + f.offset:P + f.offset + f.nbytes] = src[f.name]
    base = np.arange(n, dtype=np.int64) * W
    starts = (base + P - 10 - hlen).tolist()
    ends = (base + P + body).tolist()
    mv = memoryview(out.reshape(-1)).toreadonly()
    crcs = np.fromiter(map(crc32, map(mv.__getitem__, map(slice, starts, ends))), np.int64, n)
    out[:, P + body:] = crcs.astype("<u4").view(np.uint8).reshape(n, 4)
    return list(map(mv.__getitem__, map(slice, starts, (base + W).tolist())))

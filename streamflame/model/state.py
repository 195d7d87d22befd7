"""SeriesState and its binary codec (the one place that defines the stored state format).

Layout, little-endian:
    b"SFST" | u16 format version | u32 header length | header (UTF-8 JSON) | tensor bytes | u32 CRC-32
The header names the model (model_id), the float dtype, the counts (n_obs, n_patches), the
sampling-rate scale and every tensor's name, dtype and shape in the order they follow.
The CRC covers everything before it. No pickle anywhere: decoding only reads numbers.
"""
from __future__ import annotations

import math
import struct
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson

MAGIC = b"SFST"
FORMAT_VERSION = 1
_DTYPES = {"float32": np.float32, "float64": np.float64}
_LE = {k: np.dtype(v).newbyteorder("<") for k, v in _DTYPES.items()}
_ITEMSIZE = {k: np.dtype(v).itemsize for k, v in _DTYPES.items()}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def _dtype_name(dt: np.dtype) -> str:
    """"float32" / "float64" whatever the array's byte order (the body is little-endian)."""
    return _NAMES.get(dt) or _NAMES.get(dt.newbyteorder("=")) or str(dt)


def _le_bytes(v: np.ndarray) -> bytes:
    """The array's values as little-endian bytes in C order."""
    if v.dtype.byteorder in "<|" or (v.dtype.byteorder == "=" and sys.byteorder == "little"):
        return v.tobytes()  # C order, whatever the layout
    return v.astype(v.dtype.newbyteorder("<")).tobytes()
MAX_STATE_BYTES = 64 * 1024 * 1024


class StateDecodeError(ValueError):
    """Bytes that are not a StreamFlame state of a supported version (corrupt or foreign)."""


@dataclass
class SeriesState:
    """Everything StreamFlame remembers about one series. Treat as immutable."""
    model_id: str
    dtype: str                               # "float32" | "float64" (model float type)
    tensors: dict[str, np.ndarray]           # see model.flame.STATE_FIELDS
    buffer: np.ndarray                       # observations of the unfinished patch (< patch_len)
    n_obs: int = 0                           # observations fed in total
    n_patches: int = 0                       # complete patches applied
    scale: float = 1.0                       # sampling-rate scale factor (multiplies SSD dt)
    meta: dict = field(default_factory=dict)  # reserved, serialised as JSON

    def to_bytes(self) -> bytes:
        arrays = dict(self.tensors)
        arrays["buffer"] = self.buffer
        header = {
            "model_id": self.model_id, "dtype": self.dtype, "n_obs": int(self.n_obs),
            "n_patches": int(self.n_patches), "scale": float(self.scale), "meta": self.meta,
            "tensors": [[k, _dtype_name(v.dtype), list(v.shape)] for k, v in arrays.items()],
        }
        h = orjson.dumps(header, option=orjson.OPT_SORT_KEYS)
        body = b"".join(_le_bytes(v) for v in arrays.values())
        out = MAGIC + struct.pack("<HI", FORMAT_VERSION, len(h)) + h + body
        return out + struct.pack("<I", zlib.crc32(out))

    @classmethod
    def from_bytes(cls, b: bytes) -> "SeriesState":
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise StateDecodeError(f"state must be bytes, got {type(b).__name__}")
        if type(b) is not bytes:
            b = bytes(b)
        if len(b) < 14 or b[:4] != MAGIC:
            raise StateDecodeError("not a StreamFlame state (bad magic)")
        if len(b) > MAX_STATE_BYTES:
            raise StateDecodeError(f"state of {len(b)} bytes exceeds {MAX_STATE_BYTES}")
        (crc,) = struct.unpack("<I", b[-4:])
        if zlib.crc32(memoryview(b)[:-4]) != crc:
            raise StateDecodeError("state checksum mismatch (corrupt bytes)")
        version, hlen = struct.unpack("<HI", b[4:10])
        if version != FORMAT_VERSION:
            raise StateDecodeError(f"unsupported state format version {version} (this build reads {FORMAT_VERSION})")
        try:
            header = orjson.loads(memoryview(b)[10:10 + hlen])
            pos, specs = 10 + hlen, []
            for name, dt, shape in header["tensors"]:
                if dt not in _DTYPES:
                    raise StateDecodeError(f"tensor {name!r}: unsupported dtype {dt!r}")
                if type(shape) is not list or not all(type(x) is int and x >= 0 for x in shape):
                    raise StateDecodeError(f"tensor {name!r}: bad shape {shape!r}")
                count = math.prod(shape)
                n = count * _ITEMSIZE[dt]
                if pos + n > len(b) - 4:
                    raise StateDecodeError(f"tensor {name!r} runs past the end of the state")
                specs.append((name, dt, shape, pos, count))
                pos += n
            if pos != len(b) - 4:
                raise StateDecodeError("trailing bytes after the last tensor")
            # Consecutive tensors of one dtype are copied out in one piece; each is a view of
            # its own part of that copy (a few numpy calls per state instead of ~5 per tensor).
            arrays, i = {}, 0
            while i < len(specs):
                dt, start = specs[i][1], specs[i][3]
                j = i
                while j < len(specs) and specs[j][1] == dt:
                    j += 1
                total = sum(sp[4] for sp in specs[i:j])
                flat = np.frombuffer(b, dtype=_LE[dt], count=total, offset=start).astype(dt)
                a = 0
                for name, _, shape, _, count in specs[i:j]:
                    arrays[name] = flat[a:a + count].reshape(shape)
                    a += count
                i = j
            buffer = arrays.pop("buffer")
            return cls(model_id=str(header["model_id"]), dtype=str(header["dtype"]), tensors=arrays,
                       buffer=buffer, n_obs=int(header["n_obs"]), n_patches=int(header["n_patches"]),
                       scale=float(header["scale"]), meta=dict(header.get("meta") or {}))
        except StateDecodeError:
            raise
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as e:
            raise StateDecodeError(f"malformed state header: {e}") from e

    def detached(self) -> "SeriesState":
        """The same state with arrays of its own: a state from ``update_many`` views one
        row of the batch's arrays, which a long-kept copy (the worker's state cache)
        would otherwise keep alive whole."""
        return SeriesState(self.model_id, self.dtype, {k: np.array(v) for k, v in self.tensors.items()},
                           np.array(self.buffer), self.n_obs, self.n_patches, self.scale, dict(self.meta))

    @property
    def nbytes(self) -> int:
        return len(self.to_bytes())

    def __eq__(self, other) -> bool:  # exact equality (tests, dedup checks)
        if not isinstance(other, SeriesState):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

"""The hostile traffic of `streamflame fuzz`: a seeded mix of valid series and every kind of bad
record (:func:`build_traffic`), each with what ingest must do with it."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamflame.core.constants import PATCH_LEN
from streamflame.core.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, iso_ms
from streamflame.messages import MAX_ABS_VALUE

T0 = 1_704_067_200_000          # 2024-01-01, anchor of the valid series


FREQ_MS = 60_000                # valid series' configured grid step ("v-*" group)


MAX_GAP_STEPS = 10_000          # ingest default, used for timestamp_too_far noise


BIG_BYTES = 10 * 2**20          # "10 MB payload"


MIB_ID = 2**20                  # "1 MB series id"


@dataclass
class Rec:
    """One generated record. ``expect``: the DLQ reason, None for a record that
    must be accepted. ``ident``: how its dead letter is found (key for
    ``noise-*`` keys, else key + value)."""

    key: bytes | None
    value: bytes | None
    expect: str | None
    kind: str

    @property
    def ident(self):
        if self.key is not None and self.key.startswith(b"noise-"):
            return self.key[:64]  # unique; a dead letter too large for one request keeps the key's first bytes
        return (self.key, self.value)


@dataclass
class Traffic:
    records: list[Rec]
    valid: dict[str, dict[int, float | None]]      # valid series -> slot -> value (None = null)
    expected_patches: dict[str, int]                # valid series -> number of complete patches
    accepted_noise_series: list[str] = field(default_factory=list)

    @property
    def expected_reasons(self) -> Counter:
        return Counter(r.expect for r in self.records if r.expect is not None)


def _j(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _pad_json(n: int, i: int) -> bytes:
    return b'{"series_id":"w-pad","timestamp":0,"value":1.0,"nonce":%d,"pad":"' % i + b"x" * n + b'"}'


def _decode_noise(rng: np.random.Generator, i: int, big_every: int) -> tuple[bytes | None, str, str]:
    sid = f"w-n{i}"
    kinds = [
        ("empty", lambda: (b"", "empty_message")),
        ("tombstone", lambda: (None, "empty_message")),
        ("invalid_utf8", lambda: (b'{"series_id":"' + bytes([0xff, 0xfe]) + b'%d","timestamp":0,"value":1}' % i,
                                  "invalid_utf8")),
        ("random_binary", lambda: (rng.bytes(int(rng.integers(1, 200))) + b"\xff\xc0%d" % i, "invalid_utf8")),
        ("truncated_json", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1.0})[:-int(rng.integers(1, 10))]
                                    .replace(b"w-n", b"w-n%d-" % i, 1), "invalid_json")),
        ("garbage_text", lambda: (b"hello %d not json" % i, "invalid_json")),
        ("deep_nesting", lambda: (b"[" * 100_000 + b"%d" % i + b"]" * 100_000, "invalid_json")),
        ("not_object", lambda: (_j([sid, T0, 1.0]), "not_an_object")),
        ("not_object_scalar", lambda: (b'"%s"' % sid.encode(), "not_an_object")),
        ("missing_series", lambda: (_j({"timestamp": T0, "value": 1.0, "nonce": i}), "missing_field")),
        ("missing_value", lambda: (_j({"series_id": sid, "timestamp": T0}), "missing_field")),
        ("missing_values", lambda: (_j({"series_id": sid, "timestamps": [T0]}), "missing_field")),
        ("ambiguous", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1, "values": [1]}), "ambiguous_form")),
        ("id_number", lambda: (_j({"series_id": i, "timestamp": T0, "value": 1.0}), "bad_series_id")),
        ("id_empty", lambda: (_j({"series_id": "", "timestamp": T0, "value": 1.0, "nonce": i}), "bad_series_id")),
        ("id_control", lambda: (_j({"series_id": f"a\x00b{i}", "timestamp": T0, "value": 1.0}), "bad_series_id")),
        ("id_long", lambda: (_j({"series_id": "L" * int(rng.integers(257, 5000)) + str(i), "timestamp": T0,
                                 "value": 1.0}), "series_id_too_long")),
        ("ts_numeric_string", lambda: (_j({"series_id": sid, "timestamp": str(T0), "value": 1.0}), "bad_timestamp")),
        ("ts_bool", lambda: (_j({"series_id": sid, "timestamp": True, "value": 1.0}), "bad_timestamp")),
        ("ts_text", lambda: (_j({"series_id": sid, "timestamp": "yesterday", "value": 1.0}), "bad_timestamp")),
        ("ts_after_9999", lambda: (_j({"series_id": sid, "timestamp": MAX_EPOCH_MS + 1 + int(rng.integers(0, 10**15)),
                                       "value": 1.0}), "bad_timestamp")),
        ("ts_before_1", lambda: (_j({"series_id": sid, "timestamp": MIN_EPOCH_MS - 1 - int(rng.integers(0, 10**15)),
                                     "value": 1.0}), "bad_timestamp")),
        ("ts_1e308", lambda: (_j({"series_id": sid, "timestamp": 1e308, "value": 1.0}), "bad_timestamp")),
        ("ts_year_10000", lambda: (_j({"series_id": sid, "timestamp": "10000-01-01T00:00:00Z", "value": 1.0}),
                                   "bad_timestamp")),
        ("value_string", lambda: (_j({"series_id": sid, "timestamp": T0, "value": "3.5"}), "bad_value")),
        ("value_bool", lambda: (_j({"series_id": sid, "timestamp": T0, "value": False}), "bad_value")),
        ("value_list", lambda: (_j({"series_id": sid, "timestamp": T0, "value": [1.0]}), "bad_value")),
        ("value_nan", lambda: (b'{"series_id":"%s","timestamp":%d,"value":NaN}' % (sid.encode(), T0),
                               "non_finite_value")),
        ("value_inf", lambda: (b'{"series_id":"%s","timestamp":%d,"value":Infinity}' % (sid.encode(), T0),
                               "non_finite_value")),
        ("value_neg_inf", lambda: (b'{"series_id":"%s","timestamp":%d,"value":-Infinity}' % (sid.encode(), T0),
                                   "non_finite_value")),
        ("value_1e400", lambda: (b'{"series_id":"%s","timestamp":%d,"value":1e400}' % (sid.encode(), T0),
                                 "non_finite_value")),
        ("value_1e39", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1e39}), "value_out_of_range")),
        ("value_neg_1e308", lambda: (_j({"series_id": sid, "timestamp": T0, "value": -1e308}), "value_out_of_range")),
        ("batch_one_1e300", lambda: (_j({"series_id": sid, "timestamps": [T0, T0 + FREQ_MS], "values": [1.0, 1e300]}),
                                     "value_out_of_range")),
        ("batch_one_nan", lambda: (b'{"series_id":"%s","timestamps":[%d,%d],"values":[1.0,NaN]}'
                                   % (sid.encode(), T0, T0 + FREQ_MS), "non_finite_value")),
        ("batch_mismatch", lambda: (_j({"series_id": sid, "timestamps": [T0, T0 + 1], "values": [1.0]}),
                                    "length_mismatch")),
        ("batch_not_array", lambda: (_j({"series_id": sid, "timestamps": T0, "values": 1.0}), "length_mismatch")),
        ("over_max_bytes", lambda: (_pad_json(1_000_001, i), "too_large")),
        ("mib_series_id", lambda: (_j({"series_id": "M" * MIB_ID + str(i), "timestamp": T0, "value": 1.0}),
                                   "too_large")),
        ("key_mismatch", lambda: (_j({"series_id": sid, "timestamp": T0, "value": 1.0}), "key_mismatch")),
    ]
    if big_every and i % big_every == 0:
        return _pad_json(BIG_BYTES, i), "too_large", "10mib_payload"
    heavy = {"over_max_bytes", "mib_series_id", "deep_nesting"}  # ~1 MB / 200 kB each: keep them rare
    light = [kd for kd in kinds if kd[0] not in heavy]
    pick = [kd for kd in kinds if kd[0] in heavy] if rng.random() < 0.003 else light
    name, make = pick[int(rng.integers(0, len(pick)))]
    value, reason = make()
    return value, reason, name


def build_traffic(n_messages: int, seed: int = 0, *, n_valid_series: int | None = None,
                  valid_fraction: float = 0.35, big_payloads: int = 2) -> Traffic:
    """Generate about ``n_messages`` records in produce order.

    * valid series ``v-<k>`` (group ``v-*``, frequency 1min, anchor 2024-01-01):
      single messages (epoch ms or ISO) or batch messages, 2% missing slots
      and 3% null values; their hostile records (``duplicate``, ``late``
      re-deliveries and reorderings, ``off_grid``, ``timestamp_too_far``, far
      past/future timestamps) sit inside their own stream with the reason the
      policy gives at that point;
    * accepted-but-extreme series ``w-*`` (values of +-MAX_ABS_VALUE and 5e-324, anchors
      in year 1 and at the end of year 9999, a 200-year inferred step) that go
      through the worker and must not crash it;
    * decode-level hostile records (key ``noise-<i>``) at random places, and
      ``big_payloads`` records of 10 MiB.
    """
    rng = np.random.default_rng(seed)
    n_valid_msgs = int(n_messages * valid_fraction)
    if n_valid_series is None:
        n_valid_series = max(4, min(200, n_valid_msgs // 150))
    streams: dict[str, list[Rec]] = {}
    valid: dict[str, dict[int, float | None]] = {}
    expected_patches: dict[str, int] = {}
    nonce = [0]

    def tag() -> int:
        nonce[0] += 1
        return nonce[0]

    per_series_msgs = max(1, n_valid_msgs // n_valid_series)
    for k in range(n_valid_series):
        sid = f"v-{k:04d}"
        batch = k % 3 == 0
        n_slots = per_series_msgs * (12 if batch else 1) + int(rng.integers(1, PATCH_LEN))
        keep = rng.random(n_slots) > 0.02
        keep[:2] = True
        keep[-1] = True
        nulls = rng.random(n_slots) < 0.03
        nulls[0] = False
        vals = 20 + 5 * np.sin(np.arange(n_slots) / (4 + k % 9)) + rng.normal(0, 0.3, n_slots)
        slots = {s: (None if nulls[s] else float(vals[s])) for s in range(n_slots) if keep[s]}
        order = sorted(slots)
        msgs: list[Rec] = []
        key = sid.encode()
        seen: set[int] = set()
        last: int | None = None
        dropped: set[int] = set()

        def old_slot_reason(s: int) -> str:
            # slot s <= last: late when inside an emitted patch, duplicate when observed in the open patch
            open_start = (last // PATCH_LEN + (1 if last % PATCH_LEN == PATCH_LEN - 1 else 0)) * PATCH_LEN
            if s < open_start:
                return "late"
            return "duplicate" if s in seen else "late"

        def noise_after() -> None:
            """Maybe insert one grid-level hostile record at this point of the stream."""
            if last is None or last < 3 or rng.random() > 0.5:
                return
            kind = int(rng.integers(0, 6))
            n = tag()
            if kind == 0:                                    # re-delivery of an earlier slot (other value)
                s = int(rng.choice(sorted(seen))) if seen and rng.random() < 0.5 else int(rng.integers(0, last + 1))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS, "value": -1.0}, \
                    old_slot_reason(s), "redelivery"
            elif kind == 1:                                  # off the grid (half a step)
                s = last + int(rng.integers(0, 100))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS + FREQ_MS // 2,
                                     "value": 1.0}, "off_grid", "off_grid"
            elif kind == 2:                                  # too far ahead
                s = last + MAX_GAP_STEPS + 1 + int(rng.integers(0, 10**6))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS, "value": 1.0}, \
                    "timestamp_too_far", "too_far"
            elif kind == 3:                                  # far future: last grid slot of year 9999
                s = (MAX_EPOCH_MS - T0) // FREQ_MS
                doc, reason, name = {"series_id": sid, "timestamp": iso_ms(T0 + s * FREQ_MS), "value": 1.0}, \
                    "timestamp_too_far", "far_future"
            elif kind == 4:                                  # far past: year 1 (before the anchor)
                doc, reason, name = {"series_id": sid, "timestamp": "0001-01-01T00:00:00Z", "value": 1.0}, \
                    "late", "far_past"
            else:                                            # extreme but finite value at an old slot
                s = int(rng.integers(0, last + 1))
                doc, reason, name = {"series_id": sid, "timestamp": T0 + s * FREQ_MS, "value": MAX_ABS_VALUE}, \
                    old_slot_reason(s), "old_extreme"
            doc["nonce"] = n
            msgs.append(Rec(key, _j(doc), reason, name))

        i = 0
        held: list[tuple[int, int]] = []  # reordered single messages: (slot, deliver after this many more)
        while i < len(order):
            if batch:
                part = order[i:i + int(rng.integers(1, 25))]
                i += len(part)
                msgs.append(Rec(key, _j({"series_id": sid, "timestamps": [T0 + s * FREQ_MS for s in part],
                                         "values": [slots[s] for s in part]}), None, "valid_batch"))
                for s in part:
                    if last is not None and s // PATCH_LEN != last // PATCH_LEN:
                        seen = set()
                    seen.add(s)
                    last = s
            else:
                s = order[i]
                i += 1
                # reordering: hold this one back and deliver it after 1-3 later ones (it is then late)
                if 4 <= i < len(order) - 4 and rng.random() < 0.01:
                    held.append((s, int(rng.integers(1, 4))))
                    dropped.add(s)
                    continue
                ts = T0 + s * FREQ_MS
                msgs.append(Rec(key, _j({"series_id": sid, "timestamp": ts if k % 2 else iso_ms(ts),
                                         "value": slots[s]}), None, "valid"))
                if last is not None and s // PATCH_LEN != last // PATCH_LEN:
                    seen = set()
                seen.add(s)
                last = s
                still = []
                for hs, n in held:
                    if n <= 1:
                        msgs.append(Rec(key, _j({"series_id": sid, "timestamp": T0 + hs * FREQ_MS,
                                                 "value": slots[hs], "nonce": tag()}), old_slot_reason(hs),
                                        "reordered"))
                    else:
                        still.append((hs, n - 1))
                held = still
            if last is not None and last % PATCH_LEN == PATCH_LEN - 1:
                seen = set()  # the patch of `last` is emitted
            noise_after()
        for s in dropped:
            del slots[s]
        valid[sid] = slots
        expected_patches[sid] = (max(slots) + 1) // PATCH_LEN
        streams[sid] = msgs

    # accepted-but-extreme series (no dead letters expected): through the worker, no crash
    extreme: list[str] = []

    def extreme_series(sid: str, t0: int, step: int, values: list) -> None:
        key = sid.encode()
        streams[sid] = [Rec(key, _j({"series_id": sid, "timestamp": t0 + j * step, "value": v}), None, "extreme")
                        for j, v in enumerate(values)]
        extreme.append(sid)

    n_ext = 3 * PATCH_LEN + 3  # three patches: alerts of patch k+1 are checked against forecast k
    big = MAX_ABS_VALUE  # the largest accepted magnitude (float32's maximum)
    extreme_series("w-huge", T0, FREQ_MS, [big if j % 2 else -big for j in range(n_ext)])
    extreme_series("w-tiny", T0, FREQ_MS, [5e-324 * (j % 3) for j in range(n_ext)])
    extreme_series("w-mixed", T0, FREQ_MS, [big if j == 7 else (None if j % 5 == 0 else float(j)) for j in range(n_ext)])
    extreme_series("w-year1", MIN_EPOCH_MS, FREQ_MS, [float(j) for j in range(n_ext)])
    end = MAX_EPOCH_MS - MAX_EPOCH_MS % FREQ_MS
    extreme_series("w-year9999", end - (2 * PATCH_LEN - 1) * FREQ_MS, FREQ_MS, [float(j) for j in range(2 * PATCH_LEN)])
    step = (MAX_EPOCH_MS - MIN_EPOCH_MS) // PATCH_LEN  # ~208 years, inferred
    extreme_series("w-centuries", MIN_EPOCH_MS, step, [float(j) for j in range(PATCH_LEN)])

    # decode-level noise with unique keys
    n_streamed = sum(len(m) for m in streams.values())
    n_noise = max(0, n_messages - n_streamed)
    big_every = max(1, n_noise // (big_payloads + 1)) if big_payloads and n_noise else 0
    noise: list[Rec] = []
    for j in range(n_noise):
        value, reason, name = _decode_noise(rng, j, big_every if j else 0)
        if big_every and j and j % big_every == 0 and (j // big_every) > big_payloads:
            value, reason, name = _decode_noise(rng, j, 0)
        key = b"noise-%d" % j
        if name == "key_mismatch":
            if j % 4 == 1:    # no key at all
                key = None
            elif j % 4 == 2:  # a key that is not UTF-8
                key = b"\xff\xfe-%d" % j
            elif j % 4 == 3 and rng.random() < 0.05:  # a 1 MiB key (its dead letter keeps the first bytes, marked)
                key = b"noise-%d-" % j + b"k" * MIB_ID
            if key is None or not key.startswith(b"noise-"):
                value = value[:-1] + b',"nonce":"k%d"}' % j
        noise.append(Rec(key, value, reason, name))

    # interleave: every stream in its own order, streams and noise mixed at random
    draw = np.array([sid for sid, m in streams.items() for _ in m] + [""] * len(noise), dtype=object)
    rng.shuffle(draw)
    pos = {sid: 0 for sid in streams}
    out: list[Rec] = []
    ni = 0
    for sid in draw:
        if sid == "":
            out.append(noise[ni])
            ni += 1
        else:
            out.append(streams[sid][pos[sid]])
            pos[sid] += 1
    return Traffic(out, valid, expected_patches, extreme)

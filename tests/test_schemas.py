"""Message shapes: timestamps, the observation decoder and its reject reasons,
topic models, encode/decode and the forecast seed."""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamflame.core.constants import PATCH_LEN
from streamflame.core.frequency import format_level
from streamflame.core.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, iso_ms, to_epoch_ms
from streamflame.messages import (
    REJECT_REASONS,
    AlertMessage,
    DeadLetter,
    ForecastMessage,
    Observation,
    PatchMessage,
    RejectedMessage,
    alert_score,
    decode_alert,
    decode_dead_letter,
    decode_forecast,
    decode_observation_message,
    decode_patch,
    encode,
    forecast_seed,
)

JAN1 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-01-01T00:00:00Z", JAN1),
        ("2024-01-01T00:00:00+00:00", JAN1),
        ("2024-01-01T02:00:00+02:00", JAN1),
        ("2023-12-31T18:30:00-05:30", JAN1),
        ("2024-01-01T00:00:00", JAN1),  # naive = UTC
        ("2024-01-01 00:00:00", JAN1),
        ("2024-01-01", JAN1),
        ("2024-01-01T00:00:00.123Z", JAN1 + 123),
        ("2024-01-01T00:00:00.123999Z", JAN1 + 123),  # microseconds truncate to the ms
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
    ],
)
def test_iso_timestamps(text, expected):
    assert to_epoch_ms(text) == expected


@pytest.mark.parametrize("value, expected", [(JAN1, JAN1), (0, 0), (-5, -5), (1.4, 1), (1.6, 2), (float(JAN1), JAN1)])
def test_epoch_ms_numbers(value, expected):
    assert to_epoch_ms(value) == expected


def test_numpy_scalars_are_numbers():
    assert to_epoch_ms(np.int64(JAN1)) == JAN1
    assert to_epoch_ms(np.float32(1024.0)) == 1024


@pytest.mark.parametrize(
    "bad",
    [True, False, None, "1704067200000", "yesterday", "", "2024-13-01", float("nan"), float("inf"),
     MAX_EPOCH_MS + 1, MIN_EPOCH_MS - 1, 1e300, [JAN1], {"ms": 1}],
)
def test_bad_timestamps_raise_value_error(bad):
    with pytest.raises(ValueError):
        to_epoch_ms(bad)


@pytest.mark.parametrize(
    "ms, text",
    [(JAN1, "2024-01-01T00:00:00Z"), (JAN1 + 7, "2024-01-01T00:00:00.007Z"), (0, "1970-01-01T00:00:00Z"),
     (-1, "1969-12-31T23:59:59.999Z"), (MIN_EPOCH_MS, "0001-01-01T00:00:00Z"), (MAX_EPOCH_MS, "9999-12-31T23:59:59.999Z")],
)
def test_iso_ms(ms, text):
    assert iso_ms(ms) == text
    assert to_epoch_ms(text) == ms


@given(st.integers(MIN_EPOCH_MS, MAX_EPOCH_MS))
def test_iso_round_trip(ms):
    assert to_epoch_ms(iso_ms(ms)) == ms


# --------------------------------------------------------------------------- observation decoder


def obs(**fields) -> bytes:
    return json.dumps(fields).encode()  # stdlib: writes NaN/Infinity like many producers do


def test_single_form():
    got = decode_observation_message(obs(series_id="s1", timestamp="2024-01-01T00:10:00Z", value=1.5))
    assert got == [Observation("s1", JAN1 + 600_000, 1.5)]
    assert decode_observation_message(obs(series_id="s1", timestamp=JAN1, value=None)) == [Observation("s1", JAN1, None)]
    # ints become floats; str input and unknown keys are fine
    (o,) = decode_observation_message('{"series_id":"s1","timestamp":0,"value":3,"unit":"C"}')
    assert o.value == 3.0 and type(o.value) is float


def test_batch_form_keeps_order_and_mixes_timestamp_kinds():
    raw = obs(series_id="s2", timestamps=[JAN1, "2024-01-01T00:01:00+00:00", JAN1 + 120_000.0], values=[1, None, -2.5])
    assert decode_observation_message(raw) == [
        Observation("s2", JAN1, 1.0), Observation("s2", JAN1 + 60_000, None), Observation("s2", JAN1 + 120_000, -2.5)
    ]
    assert decode_observation_message(obs(series_id="s2", timestamps=[], values=[])) == []


LIMITS = dict(max_series_id_len=8, max_message_bytes=400, max_batch=5)

REJECTS = [
    ("empty_message", b""),
    ("empty_message", None),
    ("too_large", obs(series_id="s", timestamp=0, value=1.0, pad="x" * 400)),
    ("too_large", obs(series_id="s", timestamps=list(range(6)), values=[1.0] * 6)),
    ("invalid_utf8", b'{"series_id": "\xff\xfe", "timestamp": 0, "value": 1}'),
    ("invalid_json", b'{"series_id": "s", "timestamp": 0, "value": 1'),
    ("invalid_json", b"{'series_id': 's'}"),
    ("not_an_object", b"[1, 2]"),
    ("not_an_object", b"null"),
    ("not_an_object", b'"s,0,1"'),
    ("missing_field", obs(timestamp=0, value=1.0)),
    ("missing_field", obs(series_id="s", value=1.0)),
    ("missing_field", obs(series_id="s", timestamp=0)),
    ("missing_field", obs(series_id="s", timestamps=[0])),
    ("ambiguous_form", obs(series_id="s", timestamp=0, value=1.0, timestamps=[0], values=[1.0])),
    ("bad_series_id", obs(series_id=17, timestamp=0, value=1.0)),
    ("bad_series_id", obs(series_id="", timestamp=0, value=1.0)),
    ("bad_series_id", obs(series_id=None, timestamp=0, value=1.0)),
    ("bad_series_id", obs(series_id="a\nb", timestamp=0, value=1.0)),
    ("series_id_too_long", obs(series_id="s" * 9, timestamp=0, value=1.0)),
    ("bad_timestamp", obs(series_id="s", timestamp="yesterday", value=1.0)),
    ("bad_timestamp", obs(series_id="s", timestamp=True, value=1.0)),
    ("bad_timestamp", obs(series_id="s", timestamp="1704067200000", value=1.0)),
    ("bad_timestamp", obs(series_id="s", timestamp=None, value=1.0)),
    ("bad_timestamp", obs(series_id="s", timestamp=1e300, value=1.0)),
    ("bad_value", obs(series_id="s", timestamp=0, value="1.5")),
    ("bad_value", obs(series_id="s", timestamp=0, value=True)),
    ("bad_value", obs(series_id="s", timestamp=0, value=[1.0])),
    ("non_finite_value", obs(series_id="s", timestamp=0, value=float("nan"))),
    ("non_finite_value", obs(series_id="s", timestamp=0, value=float("inf"))),
    ("non_finite_value", b'{"series_id": "s", "timestamp": 0, "value": -Infinity}'),
    ("non_finite_value", b'{"series_id": "s", "timestamp": 0, "value": 1e400}'),
    ("non_finite_value", b'{"series_id": "s", "timestamp": 0, "value": 1' + b"0" * 330 + b"}"),
    ("length_mismatch", obs(series_id="s", timestamps=[0, 1], values=[1.0])),
    ("length_mismatch", obs(series_id="s", timestamps=0, values=[1.0])),
]


@pytest.mark.parametrize("reason, raw", REJECTS)
def test_reject_reasons(reason, raw):
    with pytest.raises(RejectedMessage) as e:
        decode_observation_message(raw, **LIMITS)
    assert e.value.reason == reason, e.value.detail
    assert e.value.detail and reason in REJECT_REASONS


def test_every_decoder_reason_is_exercised():
    decoder_reasons = {r for r in REJECT_REASONS if r in {
        "empty_message", "too_large", "invalid_utf8", "invalid_json", "not_an_object", "missing_field",
        "ambiguous_form", "bad_series_id", "series_id_too_long", "bad_timestamp", "bad_value",
        "non_finite_value", "length_mismatch"}}
    assert decoder_reasons == {r for r, _ in REJECTS}


def test_limits_are_inclusive():
    assert decode_observation_message(obs(series_id="s" * 8, timestamp=0, value=1.0), **LIMITS)
    assert len(decode_observation_message(obs(series_id="s", timestamps=list(range(5)), values=[1.0] * 5), **LIMITS)) == 5


def test_one_bad_element_rejects_the_whole_batch_and_names_it():
    raw = obs(series_id="s", timestamps=[0, 1, 2, 3], values=[1.0, 2.0, float("nan"), 4.0])
    with pytest.raises(RejectedMessage) as e:
        decode_observation_message(raw)
    assert e.value.reason == "non_finite_value" and "values[2]" in e.value.detail
    with pytest.raises(RejectedMessage) as e:
        decode_observation_message(obs(series_id="s", timestamps=[0, "noon"], values=[1.0, 2.0]))
    assert e.value.reason == "bad_timestamp" and "timestamps[1]" in e.value.detail


def test_rejected_message_is_a_value_error_with_both_parts():
    with pytest.raises(ValueError, match="bad_value: value must be a number or null, got string"):
        decode_observation_message(obs(series_id="s", timestamp=0, value="x"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
field_values = json_values | st.sampled_from(["2024-01-01T00:00:00Z", JAN1, "s", ""])
message_like = st.fixed_dictionaries(
    {},
    optional={
        "series_id": field_values, "timestamp": field_values, "value": field_values,
        "timestamps": st.lists(field_values, max_size=4) | field_values,
        "values": st.lists(field_values, max_size=4) | field_values,
    },
)


def _decode_or_reject(raw) -> None:
    try:
        out = decode_observation_message(raw)
    except RejectedMessage as e:
        assert e.reason in REJECT_REASONS
        return
    for o in out:  # whatever is accepted is well-formed
        assert isinstance(o.series_id, str) and o.series_id
        assert type(o.timestamp_ms) is int and MIN_EPOCH_MS <= o.timestamp_ms <= MAX_EPOCH_MS
        assert o.value is None or (type(o.value) is float and math.isfinite(o.value))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_rejected_message(raw):
    _decode_or_reject(raw)


@settings(max_examples=400, deadline=None)
@given(json_values | message_like)
def test_arbitrary_json_only_raises_rejected_message(doc):
    _decode_or_reject(json.dumps(doc).encode())  # allow_nan: NaN/Infinity literals included


# --------------------------------------------------------------------------- forecast seed


def _seed_by_definition(global_seed: int, series_id: str, seq: int) -> int:
    data = str(global_seed).encode() + b"\0" + str(seq).encode() + b"\0" + series_id.encode("utf-8")
    digest = hashlib.blake2b(data, digest_size=8, person=b"streamflame.seed").digest()
    return int.from_bytes(digest, "little") % 2**63


@pytest.mark.parametrize("args", [(0, "s", 0), (0, "sensors.temp.7", 12), (42, "ü-ß/ü", 3), (2**62, "x" * 300, 10**9)])
def test_forecast_seed_follows_its_definition(args):
    assert forecast_seed(*args) == _seed_by_definition(*args)
    assert 0 <= forecast_seed(*args) < 2**63


def test_forecast_seed_differs_by_each_input():
    base = forecast_seed(0, "a", 1)
    others = {forecast_seed(1, "a", 1), forecast_seed(0, "b", 1), forecast_seed(0, "a", 2), forecast_seed(0, "a1", 1)}
    assert base not in others and len(others) == 4
    # no ambiguity between (series "1", seq 2) style splits of the same characters
    assert forecast_seed(0, "12", 3) != forecast_seed(0, "2", 13)


def test_forecast_seed_is_identical_in_another_process():
    code = "from streamflame.messages import forecast_seed; print(forecast_seed(7, 'pump-3', 41))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout) == forecast_seed(7, "pump-3", 41)


# --------------------------------------------------------------------------- topic models


@pytest.mark.parametrize("q, key", [(0.1, "0.1"), (0.05, "0.05"), (0.975, "0.975"), (0.5, "0.5"),
                                    (np.float32(0.9), "0.9"), (0.1 + 0.2, "0.3"), (0.0001, "0.0001")])
def test_format_level(q, key):
    assert format_level(q) == key


def _patch(**over) -> dict:
    values = [float(i) for i in range(PATCH_LEN)]
    values[5] = None
    d = dict(series_id="s", seq=3, start_ms=JAN1, freq_ms=60_000, values=values, n_observed=PATCH_LEN - 1,
             last_obs_ms=JAN1 + 47 * 60_000, partition=2, first_offset=100, last_offset=146)
    d.update(over)
    return d


def test_patch_round_trip_and_nan_travels_as_null():
    values = _patch()["values"]
    values[7] = float("nan")
    p = PatchMessage(**_patch(values=values, n_observed=PATCH_LEN - 2))
    raw = encode(p)
    assert json.loads(raw)["values"][7] is None and json.loads(raw)["values"][5] is None
    back = decode_patch(raw)
    assert back == p and back.end_ms == JAN1 + PATCH_LEN * 60_000
    arr = back.values_array()
    assert arr.shape == (PATCH_LEN,) and np.isnan(arr[[5, 7]]).all() and arr[47] == 47.0


@pytest.mark.parametrize(
    "over, field",
    [(dict(values=[1.0] * 47), "values"), (dict(n_observed=48), "n_observed"), (dict(freq_ms=0), "freq_ms"),
     (dict(seq=-1), "seq"), (dict(first_offset=200), "first_offset"),
     # a patch written before ingest refused such values: bad_patch, never the model
     (dict(values=[1e39] + [1.0] * 47, n_observed=48), "float32")],
)
def test_patch_validation(over, field):
    with pytest.raises(pydantic.ValidationError, match=field):
        decode_patch(orjson.dumps(_patch(**over)))


def _forecast(**over) -> ForecastMessage:
    kw = dict(series_id="s", seq=4, origin_ms=JAN1, freq_ms=600_000,
              mean=np.array([0.1, 0.2, 0.3], dtype=np.float32), quantile_levels=(0.1, 0.5, 0.9),
              quantiles=np.array([[0.0, 0.1, 0.2], [0.1, 0.2, 0.3], [0.2, 0.3, 0.4]], dtype=np.float32),
              model_id="flame-test", produced_at_ms=JAN1 + 1)
    kw.update(over)
    return ForecastMessage.build(**kw)


def test_forecast_build_encode_decode():
    raw = encode(_forecast())
    doc = json.loads(raw)
    assert doc["origin"] == "2024-01-01T00:00:00Z" and doc["start"] == "2024-01-01T00:10:00Z"
    assert doc["frequency"] == "10min" and doc["horizon"] == 3 and list(doc["quantiles"]) == ["0.1", "0.5", "0.9"]
    assert "samples" not in doc and doc["produced_at"] == "2024-01-01T00:00:00.001Z"
    back = decode_forecast(raw)
    # float32 numbers round-trip exactly when read back as float32
    np.testing.assert_array_equal(np.array(back.mean, dtype=np.float32), np.array([0.1, 0.2, 0.3], dtype=np.float32))
    assert back.step_timestamps_ms() == [JAN1 + 600_000, JAN1 + 1_200_000, JAN1 + 1_800_000]
    assert back.step_ms(1) == to_epoch_ms(back.start)


def test_forecast_samples_and_non_contiguous_arrays():
    samples = np.arange(12, dtype=np.float64).reshape(3, 4)[:, :3]  # not C-contiguous
    qs = np.asfortranarray(np.zeros((3, 3)))
    back = decode_forecast(encode(_forecast(samples=samples, quantiles=qs)))
    assert back.samples == samples.tolist() and back.quantiles["0.5"] == [0.0, 0.0, 0.0]


def test_forecast_shape_mismatch_is_refused_on_decode():
    doc = json.loads(encode(_forecast()))
    doc["quantiles"]["0.5"] = [1.0]
    with pytest.raises(pydantic.ValidationError, match=r"quantiles\['0.5'\] has 1 steps, horizon is 3"):
        decode_forecast(orjson.dumps(doc))


@pytest.mark.parametrize(
    "value, expected",
    [(5.0, None), (0.0, None), (10.0, None), (12.0, ("above", 0.2)), (-5.0, ("below", 0.5))],
)
def test_alert_score(value, expected):
    got = alert_score(value, 0.0, 10.0)
    if expected is None:
        assert got is None
    else:
        assert got[0] == expected[0] and got[1] == pytest.approx(expected[1])


def test_alert_score_collapsed_interval_is_finite():
    direction, score = alert_score(2.0, 1.0, 1.0)
    assert direction == "above" and math.isfinite(score) and score > 1e6


def test_alert_round_trip():
    a = AlertMessage(series_id="s", timestamp=iso_ms(JAN1), timestamp_ms=JAN1, value=12.0, lower=0.0, upper=10.0,
                     levels=(0.1, 0.9), forecast_seq=3, step=2, score=0.2, direction="above")
    assert decode_alert(encode(a)) == a
    with pytest.raises(pydantic.ValidationError):
        AlertMessage(**{**a.model_dump(), "direction": "sideways"})


def test_dead_letter_keeps_any_bytes():
    original = b'{"series_id": "\xff"}'
    d = DeadLetter.build("invalid_utf8", "byte 16", source_topic="streamflame.observations", partition=1, offset=99,
                         key=b"\xfe\x00k", original=original, component="ingest", rejected_at_ms=JAN1)
    back = decode_dead_letter(encode(d))
    assert back.original_bytes() == original and back.key_bytes() == b"\xfe\x00k" and back.key is None
    assert back.rejected_at == "2024-01-01T00:00:00Z" and back.offset == 99
    assert base64.b64decode(json.loads(encode(d))["original"]) == original
    text_key = DeadLetter.build("bad_value", "x", source_topic="t", partition=0, offset=0, key=b"pump-1",
                                original=None, component="worker")
    assert text_key.key == "pump-1" and text_key.original_bytes() is None


# --------------------------------------------------------------------------- docs/schemas.md stays true

DOC = (__import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "schemas.md").read_text()


def _doc_examples() -> dict[str, bytes]:
    import re

    found = re.findall(r"<!-- example: ([\w-]+) -->\s*```json\n(.*?)```", DOC, re.S)
    return {name: body.encode() for name, body in found}


def test_doc_examples_are_valid_messages():
    ex = _doc_examples()
    assert set(ex) == {"observation", "observation-batch", "patch", "forecast", "alert", "alert-episode",
                       "dead-letter"}
    assert decode_observation_message(ex["observation"]) == [Observation("sensors.temp.kitchen", JAN1, 21.5)]
    assert [o.timestamp_ms for o in decode_observation_message(ex["observation-batch"])] == [
        JAN1, JAN1 + 60_000, JAN1 + 120_000]
    patch = decode_patch(ex["patch"])
    assert patch.last_obs_ms == patch.start_ms + 47 * patch.freq_ms
    f = decode_forecast(ex["forecast"])
    assert f.origin_ms == to_epoch_ms(f.origin) and f.step_ms(1) == to_epoch_ms(f.start)
    a = decode_alert(ex["alert"])
    assert a.timestamp_ms == f.step_ms(a.step) and a.forecast_seq == f.seq
    assert (a.lower, a.upper) == (f.quantiles["0.1"][a.step - 1], f.quantiles["0.9"][a.step - 1])
    assert alert_score(a.value, a.lower, a.upper) == (a.direction, pytest.approx(a.score))
    from streamflame.messages import AlertEpisode, AlertMessage, decode_alert_any

    assert isinstance(decode_alert_any(ex["alert"]), AlertMessage)
    ep = decode_alert_any(ex["alert-episode"])
    assert isinstance(ep, AlertEpisode) and ep.alert_id == f"{ep.series_id}/{ep.kind}/{ep.started_ms}"
    assert ep.timestamp_ms == to_epoch_ms(ep.timestamp) and ep.started_ms == to_epoch_ms(ep.started_at)
    d = decode_dead_letter(ex["dead-letter"])
    with pytest.raises(RejectedMessage) as e:
        decode_observation_message(d.original_bytes())
    assert (e.value.reason, e.value.detail) == (d.reason, d.detail)
    assert d.key_bytes() == d.key.encode()


def test_doc_reason_table_matches_code():
    import re

    documented = re.findall(r"^\| `(\w+)` \| (?:ingest|worker)", DOC, re.M)
    assert documented == list(REJECT_REASONS)


def test_encode_writes_the_same_bytes_as_orjson_on_the_model():
    """encode() hands orjson the model's field dict; the bytes equal writing the model
    through the default hook (every message type, with and without optional arrays)."""
    import orjson

    from streamflame.messages.codec import _ENCODE_OPTS, _default

    a = AlertMessage(series_id="s", timestamp="2024-01-01T00:00:00Z", timestamp_ms=1704067200000, value=2.5,
                     lower=0.0, upper=1.0, levels=(0.05, 0.95), forecast_seq=3, step=2, score=1.5,
                     direction="above")
    msgs = [a, _forecast(), _forecast(samples=[[1.0] * 3, [2.0] * 3])]
    for m in msgs:
        assert encode(m) == orjson.dumps(m, default=_default, option=_ENCODE_OPTS)
    assert b"samples" not in encode(_forecast()) and b'"samples":[[1.0' in encode(msgs[2])

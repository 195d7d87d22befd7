"""Hostile input (issue #5 item 5): properties of decoding + assembly against
the generator's documented expectations, regression tests for what the fuzz
run found, and security of stored states (item 7)."""
from __future__ import annotations


import numpy as np
import pytest

from streamflame import Forecaster
from streamflame.config import ServiceConfig
from streamflame.core.constants import PATCH_LEN
from streamflame.core.timefmt import MAX_EPOCH_MS, MIN_EPOCH_MS, iso_ms
from streamflame.messages import PatchMessage
from streamflame.model import tiny_config
from streamflame.pipeline.worker.batch import BatchProcessor, PatchRecord

@pytest.fixture(scope="module")
def forecaster() -> Forecaster:
    return Forecaster.from_config(tiny_config(), seed=0)


# --------------------------------------------------------------------------- far-future regression


@pytest.mark.parametrize("ms, text", [
    (MAX_EPOCH_MS + 1, "+10000-01-01T00:00:00Z"),
    (MAX_EPOCH_MS + 60_000, "+10000-01-01T00:00:59.999Z"),
    (MIN_EPOCH_MS - 86_400_000, "0000-12-31T00:00:00Z"),
    (MIN_EPOCH_MS - 367 * 86_400_000, "-0001-12-31T00:00:00Z"),  # year 0 is a leap year
])
def test_iso_ms_outside_years_1_to_9999_uses_the_expanded_form(ms, text):
    assert iso_ms(ms) == text


def test_iso_ms_expanded_form_agrees_with_datetime_where_both_exist():
    # the fallback path computed for in-range instants gives what datetime gives
    from streamflame.core.timefmt import _civil_from_days
    from datetime import date, timedelta

    for days in range(-719_162, 2_932_897, 9_973):
        d = date(1970, 1, 1) + timedelta(days=days)
        assert _civil_from_days(days) == (d.year, d.month, d.day)


def test_patch_ending_in_year_9999_is_forecast_not_a_worker_crash(forecaster):
    """Regression (found by `streamflame fuzz`): a series whose observations end
    at 9999-12-31 completes a patch; the forecast's `start` (origin + one step)
    is past year 9999 and iso_ms raised OverflowError, which killed the worker
    (and, supervised, crash-looped it on the same patch)."""
    freq = 60_000
    last = MAX_EPOCH_MS - MAX_EPOCH_MS % freq
    start = last - (PATCH_LEN - 1) * freq
    vals = [float(j) for j in range(PATCH_LEN)]
    p = PatchMessage(series_id="far", seq=0, start_ms=start, freq_ms=freq, values=vals, n_observed=PATCH_LEN,
                     last_obs_ms=last, partition=0, first_offset=0, last_offset=47)
    cfg = ServiceConfig(defaults={"horizon": 12, "num_samples": 4})
    res = BatchProcessor(forecaster, cfg).process([PatchRecord(p, 0, 0)], {"far": None}, produced_at_ms=0)
    (fc,) = res.forecasts
    assert fc.origin == "9999-12-31T23:59:00Z" and fc.start == "+10000-01-01T00:00:00Z"
    assert fc.step_ms(12) == last + 12 * freq and len(fc.mean) == 12
    assert res.records["far"].seq == 0


# --------------------------------------------------------------------------- properties: decode + assembly

import json  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from streamflame.pipeline.ingest.assembler import REJECTED, AssemblerSettings, SeriesAssembler  # noqa: E402
from streamflame.faults.traffic import FREQ_MS, build_traffic  # noqa: E402
from streamflame.messages import (  # noqa: E402
    MAX_ABS_VALUE,
    REJECT_REASONS,
    RejectedMessage,
    decode_observation_message,
)

valid_sid = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=256)
valid_ts = (st.integers(MIN_EPOCH_MS, MAX_EPOCH_MS).map(lambda ms: (ms, ms))
            | st.integers(MIN_EPOCH_MS, MAX_EPOCH_MS).map(lambda ms: (iso_ms(ms), ms))
            | st.integers(MIN_EPOCH_MS // 1000, MAX_EPOCH_MS // 1000).map(lambda s: (s * 1000 + 0.25, s * 1000)))
valid_value = (st.none() | st.floats(-MAX_ABS_VALUE, MAX_ABS_VALUE)
               | st.sampled_from([MAX_ABS_VALUE, -MAX_ABS_VALUE, 5e-324, 0.0, -0.0]))


@st.composite
def valid_message(draw):
    sid = draw(valid_sid)
    if draw(st.booleans()):
        (t, ms), v = draw(valid_ts), draw(valid_value)
        return {"series_id": sid, "timestamp": t, "value": v}, [(sid, ms, v)]
    pts = draw(st.lists(st.tuples(valid_ts, valid_value), max_size=30))
    doc = {"series_id": sid, "timestamps": [t for (t, _), _ in pts], "values": [v for _, v in pts]}
    return doc, [(sid, ms, v) for (_, ms), v in pts]


@settings(max_examples=400, deadline=None)
@given(valid_message(), st.dictionaries(st.sampled_from(["nonce", "unit", "meta"]), st.integers(), max_size=2))
def test_a_valid_message_is_always_accepted_exactly(msg, extra):
    doc, want = msg
    got = decode_observation_message(json.dumps({**doc, **extra}).encode())
    assert [(o.series_id, o.timestamp_ms, o.value) for o in got] == want


# (field to spoil, hostile value, the documented reason)
HOSTILE = [
    ("value", float("nan"), "non_finite_value"), ("value", float("inf"), "non_finite_value"),
    ("value", float("-inf"), "non_finite_value"), ("value", "1.5", "bad_value"), ("value", True, "bad_value"),
    ("value", [1.0], "bad_value"), ("value", {"v": 1}, "bad_value"),
    ("value", 1e39, "value_out_of_range"), ("value", -1e308, "value_out_of_range"),
    ("value", 10**39, "value_out_of_range"), ("value", float(np.nextafter(MAX_ABS_VALUE, np.inf)), "value_out_of_range"),
    ("timestamp", "1704067200000", "bad_timestamp"), ("timestamp", False, "bad_timestamp"),
    ("timestamp", MAX_EPOCH_MS + 1, "bad_timestamp"), ("timestamp", MIN_EPOCH_MS - 1, "bad_timestamp"),
    ("timestamp", 1e308, "bad_timestamp"), ("timestamp", "10000-01-01", "bad_timestamp"),
    ("timestamp", None, "bad_timestamp"), ("timestamp", "next tuesday", "bad_timestamp"),
    ("series_id", "", "bad_series_id"), ("series_id", "a\nb", "bad_series_id"), ("series_id", 7, "bad_series_id"),
    ("series_id", None, "bad_series_id"), ("series_id", "x" * 257, "series_id_too_long"),
]


@settings(max_examples=400, deadline=None)
@given(valid_message(), st.sampled_from(HOSTILE), st.data())
def test_an_invalid_message_is_always_rejected_with_its_documented_reason(msg, hostile, data):
    doc, _ = msg
    field, bad, reason = hostile
    doc = json.loads(json.dumps(doc))
    if field == "series_id":
        doc["series_id"] = bad
    elif "timestamps" in doc:
        if not doc["timestamps"]:
            doc["timestamps"], doc["values"] = [0], [0.0]
        i = data.draw(st.integers(0, len(doc["timestamps"]) - 1))
        doc[field + "s"][i] = bad
    else:
        doc[field] = bad
    with pytest.raises(RejectedMessage) as e:
        decode_observation_message(json.dumps(doc).encode())  # stdlib: writes NaN/Infinity literals
    assert e.value.reason == reason and e.value.reason in REJECT_REASONS and e.value.detail


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_generated_traffic_meets_the_generators_expectation_in_process(seed):
    """The fuzz generator's records through decode + key check + assembler (what
    ingest does per record, without Kafka): every valid record is accepted in
    full, every hostile one is rejected with exactly the reason the generator
    derived from the documented policy, and nothing raises anything else."""
    tr = build_traffic(600, seed, big_payloads=0)
    settings_ = AssemblerSettings(freq_inference_points=3)
    asm: dict[str, SeriesAssembler] = {}
    valid_obs = {sid: [] for sid in tr.valid}
    for off, r in enumerate(tr.records):
        reasons: list[str] = []
        try:
            obs = decode_observation_message(r.value)
        except RejectedMessage as e:
            reasons.append(e.reason)
            obs = []
        if obs and (r.key is None or r.key != obs[0].series_id.encode()):
            reasons.append("key_mismatch")
            obs = []
        for i, o in enumerate(obs):
            a = asm.setdefault(o.series_id, SeriesAssembler(o.series_id, settings_,
                                                            FREQ_MS if o.series_id.startswith("v-") else None))
            rej: list = []
            if a.add(o.timestamp_ms, o.value, 0, off, i, None, [], rej) == REJECTED:
                reasons.append(rej[0].reason)
            elif o.series_id in valid_obs:
                valid_obs[o.series_id].append(((o.timestamp_ms - 1_704_067_200_000) // FREQ_MS, o.value))
        assert reasons == ([] if r.expect is None else [r.expect]), (r.kind, r.value[:200] if r.value else r.value)
    for sid, slots in tr.valid.items():  # accepted = exactly the series' valid observations
        assert valid_obs[sid] == sorted(slots.items())


# --------------------------------------------------------------------------- security (item 7)

import pickle  # noqa: E402  (only to build hostile payloads; the package never imports it)
import re  # noqa: E402
from pathlib import Path  # noqa: E402

PKG = Path(__file__).resolve().parents[1] / "streamflame"


class _Trap:
    """Unpickling this creates ``path``: proof that something called pickle.loads."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_payload_as_stored_state_is_refused_never_unpickled(forecaster, redis_client, tmp_path, protocol):
    from streamflame import SeriesState
    from streamflame.model.state import StateDecodeError
    from streamflame.adapters.state.store import StateRecord, StateStore

    trap = tmp_path / "unpickled"
    payload = pickle.dumps(_Trap(trap), protocol=protocol)
    with pytest.raises(StateDecodeError, match="not a StreamFlame state"):
        SeriesState.from_bytes(payload)
    # the same bytes stored in Redis as a series' state, read by the worker's code path
    store = StateStore(redis_client, "sec")
    v = np.sin(np.arange(2 * PATCH_LEN) / 5)
    first = _patch("p", 0, v[:PATCH_LEN])
    for policy in ("reinit", "quarantine"):
        proc = BatchProcessor(forecaster, ServiceConfig(worker={"on_corrupt_state": policy},
                                                        defaults={"horizon": 8, "num_samples": 4}))
        good = proc.process([first], {"p": None}, produced_at_ms=0).records["p"]
        redis_client.delete(store.key("p"))
        assert store.save_many({"p": StateRecord(0, payload, good.meta)}, {"p": -1}).applied == ["p"]
        loaded = store.load_many(["p"])
        res = proc.process([_patch("p", 1, v[PATCH_LEN:])], loaded, produced_at_ms=0)
        if policy == "reinit":
            assert [(r.reason, "not a StreamFlame state" in r.detail) for r in res.rejected] == [("corrupt_state", True)]
            assert res.records["p"].seq == 1 and SeriesState.from_bytes(res.records["p"].state).n_patches == 1
        else:
            assert "p" in res.quarantine and "not a StreamFlame state" in res.quarantine["p"]
            assert not res.records and [r.reason for r in res.rejected] == ["series_quarantined"]
    assert not trap.exists()


def test_pickle_payload_as_ingest_cursor_is_refused_never_unpickled(tmp_path):
    from streamflame.pipeline.ingest.cursor import CursorDecodeError, IngestCursor

    trap = tmp_path / "unpickled"
    with pytest.raises(CursorDecodeError):
        IngestCursor.from_json(pickle.dumps(_Trap(trap)))
    assert not trap.exists()


def test_pickle_file_as_checkpoint_is_refused_never_unpickled(tmp_path):
    ckpt = Forecaster.from_config(tiny_config(), seed=0).save(tmp_path / "ckpt")
    trap = tmp_path / "unpickled"
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(_Trap(trap)))  # what torch.save would write
    with pytest.raises(Exception, match="(?i)header|deserializ|safetensor"):
        Forecaster.load(ckpt)
    assert not trap.exists()


def test_package_never_unpickles():
    """No module of the package imports pickle-like loaders or calls torch.load /
    np.load without allow_pickle=False (states: own binary codec; checkpoints:
    safetensors + JSON)."""
    offenders = []
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        for pat in (r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\b",
                    r"torch\.load\(", r"\.loads?\(.*allow_pickle\s*=\s*True"):
            offenders += [f"{path.relative_to(PKG)}: {m.group(0).strip()}" for m in re.finditer(pat, text, re.M)]
        for m in re.finditer(r"np\.load\(([^)]*)\)", text):
            if "allow_pickle=False" not in m.group(1):
                offenders.append(f"{path.relative_to(PKG)}: {m.group(0)}")
    assert offenders == []


def _patch(sid: str, seq: int, values) -> PatchRecord:
    freq, t0 = 60_000, 1_704_067_200_000
    start = t0 + seq * PATCH_LEN * freq
    vals = [float(x) for x in values]
    p = PatchMessage(series_id=sid, seq=seq, start_ms=start, freq_ms=freq, values=vals, n_observed=len(vals),
                     last_obs_ms=start + (PATCH_LEN - 1) * freq, partition=0, first_offset=seq * PATCH_LEN,
                     last_offset=seq * PATCH_LEN + PATCH_LEN - 1)
    return PatchRecord(p, 0, seq)


class _Recorder:
    """Stands in for a kafka-python client class: records its constructor kwargs."""

    calls: list = []

    def __init__(self, *args, **kwargs):
        type(self).calls.append(kwargs)


@pytest.mark.parametrize("kafka_cfg", [
    {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "sf",
     "sasl_password": "s3cret", "ssl_cafile": "/etc/ca.pem", "ssl_certfile": "/etc/c.pem",
     "ssl_keyfile": "/etc/k.pem", "ssl_check_hostname": False},
    {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"},
    {"security_protocol": "SSL", "ssl_cafile": "/etc/ca.pem"},
])
def test_kafka_sasl_and_tls_settings_reach_every_client_constructor(monkeypatch, kafka_cfg):
    import kafka

    from streamflame.adapters.kafka_io import make_admin, make_consumer, make_producer

    real = {"producer": kafka.KafkaProducer, "consumer": kafka.KafkaConsumer, "admin": kafka.KafkaAdminClient}
    cfg = ServiceConfig(kafka={"bootstrap": "broker-a:9093", **kafka_cfg})
    got = {}
    for role, make, cls in (("producer", make_producer, "KafkaProducer"), ("consumer", lambda c: make_consumer(c, "g"),
                                                                            "KafkaConsumer"),
                            ("admin", make_admin, "KafkaAdminClient")):
        _Recorder.calls = []
        monkeypatch.setattr(kafka, cls, _Recorder)
        make(cfg)
        (got[role],) = _Recorder.calls
    for role, kw in got.items():
        assert kw["security_protocol"] == kafka_cfg["security_protocol"], role
        assert kw["bootstrap_servers"] == ["broker-a:9093"], role
        if kafka_cfg["security_protocol"].startswith("SASL"):
            assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
                kafka_cfg["sasl_mechanism"], kafka_cfg["sasl_username"], kafka_cfg["sasl_password"]), role
        else:
            assert "sasl_mechanism" not in kw
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"):
            if name in kafka_cfg:
                assert kw[name] == kafka_cfg[name], (role, name)
        # every kwarg is a setting the real client knows (kafka-python refuses unknown ones)
        assert set(kw) <= set(real[role].DEFAULT_CONFIG), (role, set(kw) - set(real[role].DEFAULT_CONFIG))


def test_worker_state_store_over_redis_tls_as_an_acl_user(forecaster, tmp_path):
    """The worker's and ingest's Redis paths (connect(cfg.redis) -> StateStore,
    CursorStore) over TLS with a self-signed CA made here, logged in as an ACL
    user from the config; an untrusted CA and a wrong password are refused."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from streamflame.embedded import RedisServer
    from streamflame.embedded.redis_server import RedisTLS
    from streamflame.pipeline.ingest.assembler import AssemblerSettings as AS, SeriesAssembler as SA
    from streamflame.pipeline.ingest.cursors import CursorStore
    from streamflame.adapters.state.client import connect
    from streamflame.adapters.state.store import StateStore
    from test_embedded import _self_signed_ca_and_server_cert

    files = _self_signed_ca_and_server_cert(tmp_path)
    server = RedisServer(tmp_path / "redis", password="admin-pw", users={"sf-worker": "pw-w"},
                         tls=RedisTLS(cert_file=files["cert"], key_file=files["key"], ca_file=files["ca"]))
    server.start()
    try:
        url = f"rediss://127.0.0.1:{server.tls_port}/0"
        cfg = ServiceConfig(redis={"url": url, "username": "sf-worker", "password": "pw-w",
                                   "ssl_ca_certs": str(files["ca"])})
        client = connect(cfg.redis)
        assert client.acl_whoami() in ("sf-worker", b"sf-worker")
        store = StateStore(client, cfg.redis.key_prefix)
        v = np.sin(np.arange(PATCH_LEN) / 3)
        proc = BatchProcessor(forecaster, ServiceConfig(defaults={"horizon": 8, "num_samples": 4}))
        rec = proc.process([_patch("tls-1", 0, v)], {"tls-1": None}, produced_at_ms=0).records["tls-1"]
        assert store.save_many({"tls-1": rec}, {"tls-1": -1}).applied == ["tls-1"]
        assert store.load("tls-1").state == rec.state
        a = SA("tls-1", AS(), 60_000)
        a.add(0, 1.0, 0, 0, 0, None, [], [])
        cursors = CursorStore(client, cfg.redis.key_prefix)
        cursors.save_many([a.cursor(include_open=True)])
        assert cursors.load_many(["tls-1"])["tls-1"].open_slots == [[0, 1.0]]
        once = {"retry": Retry(NoBackoff(), 0)}
        with pytest.raises(redis.ConnectionError, match="(?i)certificate"):
            redis.Redis.from_url(url, username="sf-worker", password="pw-w", **once).ping()
        bad = ServiceConfig(redis={"url": url, "username": "sf-worker", "password": "nope",
                                   "ssl_ca_certs": str(files["ca"])})
        with pytest.raises(redis.AuthenticationError):
            connect(bad.redis, retry=Retry(NoBackoff(), 0)).ping()
    finally:
        server.stop()

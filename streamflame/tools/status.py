"""``streamflame status``: what a running StreamFlame is doing, from its Prometheus endpoints.

Where to look: ``--metrics URL[,URL...]`` (any mix of ingest and worker
endpoints; the role is read from the metric names), else the ``run.json`` of
``--run-dir`` (default ``.streamflame/``, written by ``streamflame up``), which
also names every pid. Each endpoint is scraped once; counters and histograms
of processes of one role are summed, lag is reported per partition.

Printed: processes up/down with pids; ingest observations in / rejected (by
reason), patches completed, lag; worker patches applied, forecasts, alerts,
lag; p50/p99 from the histograms (batch time, model step, Redis round trip,
patch and end-to-end latency), estimated like PromQL ``histogram_quantile``
(linear inside a bucket); the online accuracy per series group, both since
the processes started (exact sums of the counters, all workers together) and
recent (the exponentially weighted gauges; with several workers their mean
weighted by scored points). ``--json`` prints the same as one JSON object.

Exit status: 0 when every endpoint answered, 1 when nothing is running or an
endpoint did not answer, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import math
import sys
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from streamflame.embedded.process import pid_alive
from streamflame.embedded.stack import RUN_JSON, read_run_json

__all__ = ["scrape", "histogram_quantile", "summarize", "main"]

Sample = tuple[str, dict[str, str], float]


def scrape(url: str, timeout: float = 5.0) -> list[Sample]:
    """Every sample of a Prometheus text endpoint: ``(name, labels, value)``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode("utf-8")
    return [(s.name, dict(s.labels), float(s.value))
            for fam in text_string_to_metric_families(text) for s in fam.samples]


def role_of(samples: list[Sample]) -> str | None:
    for name, _, _ in samples:
        if name.startswith("streamflame_ingest_"):
            return "ingest"
        if name.startswith("streamflame_worker_"):
            return "worker"
    return None


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL ``histogram_quantile``: ``buckets`` = [(upper bound, cumulative count)].
    None when the histogram is empty; the highest finite bound when the rank
    falls into the +Inf bucket."""
    b = sorted(buckets)
    if not b or b[-1][1] <= 0:
        return None
    rank = q * b[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in b:
        if n >= rank:
            if math.isinf(le):
                return prev_le
            if n == prev_n:
                return le
            return prev_le + (le - prev_le) * (rank - prev_n) / (n - prev_n)
        prev_le, prev_n = le, n
    return b[-1][0]


class _Role:
    """Samples of all endpoints of one role, summed."""

    def __init__(self, prefix: str, samples: list[list[Sample]]):
        self.prefix = prefix
        self.sums: dict[tuple[str, tuple], float] = defaultdict(float)
        for endpoint in samples:
            for name, labels, value in endpoint:
                if name.endswith("_created"):
                    continue
                self.sums[(name, tuple(sorted(labels.items())))] += value

    def value(self, name: str, **labels) -> float:
        key = (self.prefix + name, tuple(sorted(labels.items())))
        return self.sums.get(key, 0.0)

    def by_label(self, name: str, label: str, **fixed) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), v in self.sums.items():
            d = dict(labels)
            if n == self.prefix + name and label in d and all(d.get(k) == x for k, x in fixed.items()):
                out[d[label]] = out.get(d[label], 0.0) + v
        return out

    def hist(self, name: str, **fixed) -> dict[str, Any]:
        buckets = {float(le): n for le, n in self.by_label(name + "_bucket", "le", **fixed).items()}
        pairs = sorted(buckets.items())
        count = self.value(name + "_count", **fixed)
        out = {"count": int(count), "sum": self.value(name + "_sum", **fixed)}
        finite = [n for le, n in pairs if not math.isinf(le)]
        for key, q in (("p50", 0.5), ("p99", 0.99)):
            out[key] = histogram_quantile(q, pairs)
            # Beyond the highest finite bucket: the value is a lower bound.
            out[key + "_above_range"] = bool(count and finite and q * count > finite[-1])
        return out


def summarize(endpoints: dict[str, list[Sample] | str], processes: list[dict] | None = None) -> dict[str, Any]:
    """The status object. ``endpoints``: url -> samples, or an error string when it did not answer."""
    by_role: dict[str, list[list[Sample]]] = {"ingest": [], "worker": []}
    eps = []
    for url, got in endpoints.items():
        if isinstance(got, str):
            eps.append({"url": url, "up": False, "error": got, "role": None})
            continue
        role = role_of(got)
        eps.append({"url": url, "up": True, "role": role})
        if role is not None:
            by_role[role].append(got)
    out: dict[str, Any] = {"processes": processes or [], "endpoints": eps}
    if by_role["ingest"]:
        r = _Role("streamflame_ingest_", by_role["ingest"])
        rejected = {k: int(v) for k, v in sorted(r.by_label("rejected_total", "reason").items())}
        out["ingest"] = {
            "processes": len(by_role["ingest"]),
            "records": int(r.value("records_total")),
            "observations": int(r.value("observations_total")),
            "accepted": int(r.value("accepted_total")),
            "rejected": sum(rejected.values()), "rejected_by_reason": rejected,
            "patches": int(r.value("patches_total")),
            "batches": int(r.value("batches_total")),
            "lag": {p: int(v) for p, v in sorted(r.by_label("lag", "partition").items(), key=lambda kv: int(kv[0]))},
            "batch_seconds": r.hist("batch_seconds"),
            "redis_seconds": r.hist("redis_seconds", op="save"),
            "alert_events": int(r.value("alert_events_total")),
            "episodes_open": {g: {k: int(n) for k, n in sorted(r.by_label("alert_episodes_open", "kind", group=g).items())
                                  if n}
                              for g in sorted(r.by_label("alert_episodes_open", "group"))},
        }
    if by_role["worker"]:
        r = _Role("streamflame_worker_", by_role["worker"])
        out["worker"] = {
            "processes": len(by_role["worker"]),
            "patches": {k: int(v) for k, v in sorted(r.by_label("patches_total", "outcome").items())},
            "forecasts": int(r.value("forecasts_published_total")),
            "alerts": int(r.value("alerts_published_total")),
            "dead_letters": {k: int(v) for k, v in sorted(r.by_label("dead_letters_total", "reason").items())},
            "lag": {p: int(v) for p, v in sorted(r.by_label("consumer_lag", "partition").items(),
                                                 key=lambda kv: int(kv[0]))},
            "batch_size": r.hist("batch_size"),
            "step_seconds": r.hist("step_seconds"),
            "redis_seconds": r.hist("redis_seconds", op="save"),
            "patch_latency_seconds": r.hist("patch_latency_seconds"),
            "e2e_latency_seconds": r.hist("e2e_latency_seconds"),
        }
        out["accuracy"] = _accuracy(r, by_role["worker"])
    return out


def _accuracy(r: _Role, endpoints: list[list[Sample]]) -> dict[str, Any]:
    acc: dict[str, Any] = {}
    for group, patches in sorted(r.by_label("online_scored_patches_total", "group").items()):
        points = r.value("online_scored_points_total", group=group)
        abs_y = r.value("online_abs_target_total", group=group)
        scaled_n = r.value("online_scaled_points_total", group=group)
        inside = r.by_label("online_inside_total", "level", group=group)
        # Recent: each worker's exponentially weighted gauge, weighted by its scored points.
        recent: dict[str, Any] = {"wql": None, "mase": None, "coverage": {}}
        parts: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for samples in endpoints:
            weight = sum(v for n, lab, v in samples
                         if n == "streamflame_worker_online_scored_points_total" and lab.get("group") == group)
            for n, lab, v in samples:
                if lab.get("group") != group or math.isnan(v):
                    continue
                if n in ("streamflame_worker_online_wql", "streamflame_worker_online_mase"):
                    parts[n.rsplit("_", 1)[1]].append((v, weight))
                elif n == "streamflame_worker_online_coverage":
                    parts["coverage:" + lab["level"]].append((v, weight))
        for key, vals in parts.items():
            total = sum(w for _, w in vals)
            mean = sum(v * w for v, w in vals) / total if total > 0 else None
            if key.startswith("coverage:"):
                recent["coverage"][key.split(":", 1)[1]] = mean
            else:
                recent[key] = mean
        acc[group] = {
            "patches": int(patches), "points": int(points),
            "wql": r.value("online_quantile_loss_total", group=group) / abs_y if abs_y > 0 else None,
            "mase": r.value("online_scaled_error_total", group=group) / scaled_n if scaled_n > 0 else None,
            "coverage": {lv: n / points if points > 0 else None
                         for lv, n in sorted(inside.items(), key=lambda kv: float(kv[0]))},
            "recent": recent,
        }
    return acc


# -- rendering ------------------------------------------------------------------------


def _num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"


def _ms(h: dict) -> str:
    if not h["count"]:
        return "no data"
    p = {k: (">" if h[k + "_above_range"] else "") + _num(h[k] * 1000) for k in ("p50", "p99")}
    return f"p50 {p['p50']} ms, p99 {p['p99']} ms (n={h['count']})"


def _e2e(wk: dict) -> str:
    """End-to-end latency, or why there is none: the worker measures it only for live data
    (a patch's last observation at most LIVE_WINDOW_S = 1 h before its forecast is published)."""
    h = wk["e2e_latency_seconds"]
    if h["count"]:
        return _ms(h)
    published = wk["patch_latency_seconds"]["count"]
    if not published:
        return "no data: no forecast published yet"
    return (f"no data: measured only for live data (a patch's last observation at most 1 h before its "
            f"forecast is published); the {published} patches so far carry older timestamps (replayed "
            f"history?); see patch latency")


def _lag(lag: dict[str, int]) -> str:
    if not lag:
        return "unknown (nothing consumed yet)"
    return f"{sum(lag.values())} total (" + ", ".join(f"p{p}: {n}" for p, n in lag.items()) + ")"


def _persistence_lines(p: dict[str, Any] | None) -> list[str]:
    """What `streamflame up` keeps, and the outcome of its broker/Redis data check
    (streamflame.embedded.incarnation): a mismatch is a WARNING line."""
    if not p:
        return []
    out = ["persistence", f"  redis         {p.get('redis')}", f"  broker        {p.get('broker')}"]
    most = p.get("broker_batches_max") or 0
    if most:
        flag = "WARNING " if most >= 800 else ""
        out.append(f"  {flag}broker batches {most} in the fullest partition (fetches stall near 1,000-2,000)")
    check = p.get("check")
    if check:
        if check.get("mismatch"):
            out.append(f"  WARNING       {check['outcome']}: {check['message']}")
        else:
            out.append(f"  data check    {check['outcome']}: {check['message']}")
    return out


def _episodes(open_by_group: dict[str, dict[str, int]] | None) -> str:
    """``group a: deviation 2, flatline 1; group b: ...`` or ``none``."""
    parts = [f"{g}: " + ", ".join(f"{k} {n}" for k, n in kinds.items())
             for g, kinds in (open_by_group or {}).items() if kinds]
    return "; ".join(parts) or "none"


def render(st: dict[str, Any]) -> str:
    lines: list[str] = []
    if st["processes"]:
        lines.append("processes")
        for p in st["processes"]:
            state = "up" if p["up"] else "DOWN"
            pid = "-" if p["pid"] is None else str(p["pid"])
            lines.append(f"  {p['name']:<12} {state:<5} pid {pid:<8} {p.get('metrics') or ''}".rstrip())
    lines += _persistence_lines(st.get("persistence"))
    down = [e for e in st["endpoints"] if not e["up"]]
    for e in down:
        lines.append(f"  metrics endpoint {e['url']} did not answer: {e['error']}")
    ing = st.get("ingest")
    if ing:
        rej = ", ".join(f"{k} {v}" for k, v in ing["rejected_by_reason"].items())
        lines += ["", f"ingest ({ing['processes']} process{'es' if ing['processes'] != 1 else ''})",
                  f"  observations  {ing['observations']} in, {ing['rejected']} rejected" + (f" ({rej})" if rej else ""),
                  f"  patches       {ing['patches']} completed",
                  f"  alerts        {ing.get('alert_events', 0)} episode events; open: {_episodes(ing.get('episodes_open'))}",
                  f"  lag           {_lag(ing['lag'])}",
                  f"  batch time    {_ms(ing['batch_seconds'])}",
                  f"  redis         {_ms(ing['redis_seconds'])}"]
    wk = st.get("worker")
    if wk:
        pt = ", ".join(f"{v} {k}" for k, v in wk["patches"].items()) or "none"
        lines += ["", f"worker ({wk['processes']} process{'es' if wk['processes'] != 1 else ''})",
                  f"  patches       {pt}",
                  f"  forecasts     {wk['forecasts']} published",
                  f"  alerts        {wk['alerts']} published",
                  f"  lag           {_lag(wk['lag'])}",
                  f"  model step    {_ms(wk['step_seconds'])}",
                  f"  redis         {_ms(wk['redis_seconds'])}",
                  f"  patch latency {_ms(wk['patch_latency_seconds'])}",
                  f"  end-to-end    {_e2e(wk)}"]
        acc = st.get("accuracy") or {}
        lines += ["", "online accuracy (since start; recent = exponentially weighted)"]
        if not acc:
            lines.append("  nothing scored yet (a patch is scored once the series has an earlier forecast)")
        for g, a in acc.items():
            cov = ", ".join(f"{lv}: {_num(v)}" for lv, v in a["coverage"].items())
            rc = a["recent"]
            lines.append(f"  {g}: {a['patches']} patches, {a['points']} points; WQL {_num(a['wql'])} "
                         f"(recent {_num(rc['wql'])}), MASE {_num(a['mase'])} (recent {_num(rc['mase'])})")
            lines.append(f"    coverage {cov}")
    if not ing and not wk and not down:
        lines.append("no StreamFlame metrics at the given endpoints")
    return "\n".join(lines)


# -- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="streamflame status", description=(
        "Summarise a running StreamFlame (ingest and worker Prometheus endpoints): processes, throughput, "
        "lag, latency percentiles and online accuracy per group."))
    p.add_argument("--run-dir", default=".streamflame", metavar="DIR",
                   help="run directory of `streamflame up` (default ./.streamflame); its run.json names the "
                        "endpoints and pids")
    p.add_argument("--metrics", metavar="URL[,URL]",
                   help="comma-separated metrics URLs to scrape instead of run.json (ingest and/or worker)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="per-endpoint timeout (default 5)")
    args = p.parse_args(argv)

    processes: list[dict] = []
    persistence = None
    if args.metrics:
        urls = [u.strip() for u in args.metrics.split(",") if u.strip()]
        if not urls:
            print("streamflame status: --metrics needs at least one URL", file=sys.stderr)
            return 2
    else:

        run_dir = Path(args.run_dir).resolve()
        info = read_run_json(run_dir)
        if info is None:
            print(f"streamflame status: nothing is running: no {run_dir / RUN_JSON} (start a stack with "
                  "`streamflame up --detach`, or point at running processes with --metrics URL[,URL])",
                  file=sys.stderr)
            return 1
        pids = info.get("pids", {})
        persistence = info.get("persistence")
        for name in ("supervisor", "broker", "redis", "s3"):
            if pids.get(name) is not None:
                processes.append({"name": name, "pid": pids[name], "up": pid_alive(pids[name])})
        urls = []
        for role in ("ingest", "worker"):
            role_urls = info.get("metrics", {}).get(role, [])
            role_pids = pids.get(role, [])
            for i, url in enumerate(role_urls):
                pid = role_pids[i] if i < len(role_pids) else None
                processes.append({"name": f"{role}-{i}", "pid": pid, "up": pid_alive(pid), "metrics": url})
                urls.append(url)
        if not pid_alive(pids.get("supervisor")):
            print(f"streamflame status: the stack in {run_dir} is not running (supervisor pid "
                  f"{pids.get('supervisor')} is gone; stale {RUN_JSON})", file=sys.stderr)
            return 1

    endpoints: dict[str, list[Sample] | str] = {}
    for url in urls:
        try:
            endpoints[url] = scrape(url, args.timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            endpoints[url] = str(getattr(e, "reason", e))
    st = summarize(endpoints, processes)
    if persistence is not None:
        st["persistence"] = persistence
    if args.json:
        import orjson

        print(orjson.dumps(st, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    else:
        print(render(st))
    ok = all(e["up"] for e in st["endpoints"]) and all(p["up"] for p in processes)
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

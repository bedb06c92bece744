"""The results table, the performance targets checked against a result, and JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Row = tuple[str, dict[str, Any]]


def specs_of(result: dict[str, Any]) -> list[str]:
    """Implementations present in a result, slotkeeper and the reference first.

    Workloads map spec -> numbers, except W2 (hold -> spec -> numbers) and W5's "reclaim"."""
    seen: list[str] = []
    for key, w in result.get("workloads", {}).items():
        if not isinstance(w, dict):  # a curve (C1..C3): a list of rows, slotkeeper only
            continue
        groups = list(w.values()) if key == "W2" else [w]
        for g in groups:
            for spec in g:
                if spec not in ("reclaim", "held") and spec not in seen:
                    seen.append(spec)
    order = {"slotkeeper": 0, "reference": 1}
    return sorted(seen, key=lambda s: (order.get(s, 2), seen.index(s)))


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        if isinstance(d, dict) and p in d:
            d = d[p]
        elif isinstance(d, list) and isinstance(p, int) and p < len(d):
            d = d[p]
        else:
            return None
    return d


def metric_rows(result: dict[str, Any]) -> list[Row]:
    wl = result.get("workloads", {})
    specs = specs_of(result)
    rows: list[Row] = []

    def add(label: str, where: tuple[Any, ...], what: tuple[Any, ...]) -> None:
        """One row: for each spec, wl[where...][spec][what...]."""
        vals = {s: _get(wl, *where, s, *what) for s in specs}
        if any(v is not None for v in vals.values()):
            rows.append((label, vals))

    add("W1 uncontended cycles/s", ("W1",), ("cycles_per_s",))
    add("W1 client CPU us/cycle", ("W1",), ("client_cpu_us_per_cycle",))
    add("W1 acquire p50 ms", ("W1",), ("acquire", "p50_ms"))
    add("W1 acquire p99 ms", ("W1",), ("acquire", "p99_ms"))
    add("W1 release p50 ms", ("W1",), ("release", "p50_ms"))
    for key, w2 in wl.get("W2", {}).items():
        hold = key.removeprefix("hold_")
        slots = next((g.get("slots") for g in w2.values()), "?")
        add(f"W2 hold {hold}: cycles/s", ("W2", key), ("cycles_per_s",))
        add(f"W2 hold {hold}: slot utilisation", ("W2", key), ("utilisation",))
        add(f"W2 hold {hold}: Jain fairness", ("W2", key), ("jain",))
        add(f"W2 hold {hold}: max holders seen (slots {slots})", ("W2", key), ("max_holders_seen",))
    add("W3 handoff (waiter idle 50 ms) p50 ms", ("W3",), ("p50_ms",))
    add("W3 handoff (waiter idle 50 ms) p99 ms", ("W3",), ("p99_ms",))
    add("W4 crash: kill->grant ms (median)", ("W4",), ("median_kill_to_grant_ms",))
    add("W4 crash: beyond remaining TTL ms (max)", ("W4",), ("max_beyond_remaining_ttl_ms",))
    w5 = wl.get("W5", {})
    levels = _get(w5, "slotkeeper", "levels") or []
    for i, lv in enumerate(levels):
        add(
            f"W5 acquire p50 ms @ {lv['live_leases']:,} leases",
            ("W5",),
            ("levels", i, "acquire", "p50_ms"),
        )
    for i, lv in enumerate(levels):
        add(
            f"W5 Redis bytes/lease @ {lv['live_leases']:,}",
            ("W5",),
            ("levels", i, "bytes_per_lease"),
        )
    for lv in _get(w5, "held", "levels") or []:
        n = lv["held_leases"]
        rows.append(
            (
                f"W5 SDK acquire p50 ms, {n:,} held by this process",
                {"slotkeeper": lv["acquire"]["p50_ms"]},
            )
        )
        rows.append(
            (
                f"W5 heartbeat Redis us per held lease per s @ {n:,}",
                {"slotkeeper": lv["heartbeat_redis_us_per_lease_s"]},
            )
        )
        if lv.get("longest_heartbeat_ms") is not None:
            rows.append(
                (
                    f"W5 longest heartbeat call ms @ {n:,}",
                    {"slotkeeper": lv["longest_heartbeat_ms"]},
                )
            )
    for rc in w5.get("reclaim", []):
        n = rc["leases"]
        rows.append((f"W5 reclaim {n:,} expired: total s", {"slotkeeper": rc["total_s"]}))
        rows.append(
            (f"W5 reclaim {n:,}: longest call ms (client)", {"slotkeeper": rc["longest_call_ms"]})
        )
        rows.append(
            (
                f"W5 reclaim {n:,}: longest EVALSHA ms (SLOWLOG)",
                {"slotkeeper": rc["slowlog_longest_evalsha_ms"]},
            )
        )
    return rows


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets (README: Performance) against this result: name, value, target,
    ok."""
    wl = result.get("workloads", {})
    out: list[dict[str, Any]] = []

    def check(name: str, value: Any, target: str, ok: bool) -> None:
        out.append({"name": name, "value": value, "target": target, "ok": bool(ok)})

    ratio = _get(result, "ratios", "W1_cycles_per_s")
    if ratio is not None:
        check("W1 cycles/s vs reference", ratio, ">= 0.8x", ratio >= 0.8)
    cpu = _get(result, "ratios", "W1_client_cpu_per_cycle")
    if cpu is not None:
        check("W1 client CPU per cycle vs reference", cpu, "<= 1.5x", cpu <= 1.5)
    events = _get(result, "ratios", "W1_events_on_vs_off")
    if events is not None:
        check("W1 cycles/s events on vs off", events, ">= 0.9x", events >= 0.9)
    p50, p99 = _get(wl, "W3", "slotkeeper", "p50_ms"), _get(wl, "W3", "slotkeeper", "p99_ms")
    if p50 is not None:
        check("W3 handoff p50 ms", p50, "<= 0.5", p50 <= 0.5)
        check("W3 handoff p99 ms", p99, "<= 1", p99 <= 1.0)
    for key, w2 in wl.get("W2", {}).items():
        sk = w2.get("slotkeeper")
        if not sk:
            continue
        check(
            f"W2 {key}: max holders seen",
            sk["max_holders_seen"],
            f"<= {sk['slots']}",
            sk["max_holders_seen"] <= sk["slots"],
        )
        if sk["hold_ms"] >= 5:
            check(
                f"W2 {key}: slot utilisation",
                sk["utilisation"],
                ">= 0.95",
                sk["utilisation"] >= 0.95,
            )
            check(f"W2 {key}: Jain fairness", sk["jain"], ">= 0.99", sk["jain"] >= 0.99)
    beyond = _get(wl, "W4", "slotkeeper", "max_beyond_remaining_ttl_ms")
    if beyond is not None:
        check("W4 crash: grant beyond remaining TTL ms", beyond, "<= 500", beyond <= 500)
    levels = _get(wl, "W5", "slotkeeper", "levels") or []
    if len(levels) >= 2:
        lo, hi = levels[0]["acquire"]["p50_ms"], levels[-1]["acquire"]["p50_ms"]
        flat = round(hi / lo, 2) if lo else 0.0
        check(
            f"W5 acquire p50 @ {levels[-1]['live_leases']:,} / @ {levels[0]['live_leases']:,}",
            flat,
            "flat (<= 1.5x)",
            flat <= 1.5,
        )
    for lv in levels:
        if lv["live_leases"] == 10000:
            check(
                "W5 bytes/lease @ 10,000",
                lv["bytes_per_lease"],
                "<= 300",
                lv["bytes_per_lease"] <= 300,
            )
    held = _get(wl, "W5", "held", "levels") or []
    if len(held) >= 2:
        lo, hi = held[0]["acquire"]["p50_ms"], held[-1]["acquire"]["p50_ms"]
        flat = round(hi / lo, 2) if lo else 0.0
        check(
            f"W5 SDK acquire p50 with {held[-1]['held_leases']:,} held / "
            f"{held[0]['held_leases']:,} held",
            flat,
            "<= 1.3x",
            flat <= 1.3,
        )
    for lv in held:
        if lv.get("longest_heartbeat_ms") is not None:
            check(
                f"W5 longest heartbeat call ms @ {lv['held_leases']:,} held",
                lv["longest_heartbeat_ms"],
                "<= 5",
                lv["longest_heartbeat_ms"] <= 5,
            )
    for rc in _get(wl, "W5", "reclaim") or []:
        n = rc["leases"]
        if n >= 100_000:
            check(f"W5 reclaim {n:,} expired: s", rc["total_s"], "< 2", rc["total_s"] < 2)
        longest = max(rc["longest_call_ms"], rc["slowlog_longest_evalsha_ms"])
        check(f"W5 reclaim {n:,}: longest call ms", longest, "<= 5", longest <= 5)
        check(
            f"W5 reclaim {n:,}: nothing left",
            rc["left_records"] + rc["left_holder_entries"],
            "0",
            rc["left_records"] + rc["left_holder_entries"] == 0,
        )
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def render(result: dict[str, Any]) -> str:
    """The results table (markdown-compatible), then the floor, the targets and the machine."""
    specs = specs_of(result)
    rows = metric_rows(result)
    head = ["metric", *specs]
    if "slotkeeper" in specs and "reference" in specs:
        head.append("sk/ref")
    lines = [head]
    for label, vals in rows:
        line = [label, *(_fmt(vals.get(s)) for s in specs)]
        if len(head) > len(specs) + 1:
            a, b = vals.get("slotkeeper"), vals.get("reference")
            ok = isinstance(a, int | float) and isinstance(b, int | float) and b
            line.append(f"{a / b:.2f}x" if ok else "")  # type: ignore[operator]
        lines.append(line)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]

    def fmt_line(r: list[str]) -> str:
        cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(r))]
        return "| " + " | ".join(cells) + " |"

    text = [fmt_line(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    text += [fmt_line(r) for r in lines[1:]]
    text += curve_lines(result)
    fl = result.get("floor")
    if fl:
        text.append("")
        text.append(
            f"floor (raw redis-py): PING p50 {fl['ping']['p50_ms']:.3f} ms "
            f"({fl['ping']['ops_per_s']:,.0f}/s), EVALSHA p50 {fl['evalsha']['p50_ms']:.3f} ms "
            f"({fl['evalsha']['ops_per_s']:,.0f}/s, a no-op script); an acquire/release cycle is "
            f"two script round trips: >= {2 * fl['evalsha']['p50_ms']:.3f} ms"
        )
        sf = fl.get("scripts")
        if sf:
            ref = _get(result, "workloads", "W1", "reference", "cycles_per_s")
            vs = f" = {sf['cycles_per_s'] / ref:.2f}x the reference's W1" if ref else ""
            text.append(
                f"floor (slotkeeper's acquire + release scripts, no SDK): "
                f"{sf['cycles_per_s']:,.0f} cycles/s{vs}, client CPU "
                f"{sf['client_cpu_us_per_cycle']} us/cycle"
            )
    tg = targets(result)
    if tg:
        text.append("")
        text.append("targets (README.md, Performance):")
        for t in tg:
            mark = "ok  " if t["ok"] else "MISS"
            text.append(f"  {mark} {t['name']}: {_fmt(t['value'])} (target {t['target']})")
    m = result.get("machine")
    if m:
        text.append("")
        text.append(
            f"machine: {m.get('nproc')} cpu ({m.get('cpu')}), Redis "
            f"{m.get('redis_server')}, Python {m.get('python')}, redis-py "
            f"{m.get('redis_py')}, load {m.get('loadavg_start')} -> {m.get('loadavg_end')}"
        )
    return "\n".join(text)


def curve_lines(result: dict[str, Any]) -> list[str]:
    """The curves (C1..C3), one small table each."""
    wl = result.get("workloads", {})
    text: list[str] = []
    if wl.get("C1"):
        text += [
            "",
            f"C1 processes on one limit of 8 slots (hold {wl['C1'][0]['hold_ms']:g} ms):",
            "| processes | cycles/s | utilisation | of reachable | Jain | max holders |",
            "|---|---|---|---|---|---|",
        ]
        text += [
            f"| {r['processes']} | {_fmt(r['cycles_per_s'])} | {_fmt(r['utilisation'])} | "
            f"{_fmt(r['utilisation_reachable'])} | {_fmt(r['jain'])} | "
            f"{r['max_holders_seen']} |"
            for r in wl["C1"]
        ]
    if wl.get("C2"):
        text += [
            "",
            "C2 waiters queued on one limit: a release that grants the next one",
            "| waiters | release->grant p50 ms | p99 ms |",
            "|---|---|---|",
        ]
        text += [
            f"| {r['waiters']:,} | {_fmt(r['release_grant']['p50_ms'])} | "
            f"{_fmt(r['release_grant']['p99_ms'])} |"
            for r in wl["C2"]
        ]
    if wl.get("C3"):
        text += [
            "",
            "C3 limits in a namespace: total s, us per limit, longest call ms as the client saw it"
            " (in Redis, SLOWLOG)",
            "| limits | ls | metrics scrape | daemon pass |",
            "|---|---|---|---|",
        ]
        for r in wl["C3"]:
            cells = [
                f"{_fmt(r[k]['total_s'])} s, {_fmt(r[k]['us_per_limit'])} us, "
                f"{_fmt(r[k]['longest_call_ms'])} ms"
                + (
                    f" ({_fmt(r[k]['longest_in_redis_ms'])} ms)"
                    if "longest_in_redis_ms" in r[k]
                    else ""
                )
                for k in ("ls", "scrape", "daemon_pass")
            ]
            text.append(f"| {r['limits']:,} | " + " | ".join(cells) + " |")
    return text


def write_json(result: dict[str, Any], path: str | Path) -> None:
    result = dict(result)
    result["targets"] = targets(result)
    Path(path).write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")

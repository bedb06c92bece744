"""The daemon's status page: one self-contained HTML document (inline style and script, no external
assets, so it works offline), rendered from the read model.

Every limit with a usage bar, its holders (host, pid, worker, label, age, expires in), its waiters
in queue order with the reason each waits, and the recent events. A small inline script
re-fetches the page every few seconds and swaps the content in place (no flicker, scroll kept);
without JavaScript a ``<meta refresh>`` does the same. Everything shown is escaped; nothing secret
(URLs, passwords) is on the page.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from html import escape
from typing import Any

from slotkeeper.broker.formatting import duration
from slotkeeper.broker.readmodel import LimitStats, wait_quantile
from slotkeeper.broker.records import Holder, Snapshot
from slotkeeper.broker.waitreasons import waiter_reasons

DEFAULT_REFRESH = 2.0

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;
color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:baseline}
header h1{font-size:18px;margin:0}header .meta{opacity:.8;font-size:13px}
#stale{display:none;background:#b42318;color:#fff;padding:6px 20px}
main{padding:12px 20px;max-width:1200px}
section.limit{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 12px;
padding:10px 14px}
.limit h2{font-size:16px;margin:0 0 6px;display:flex;gap:12px;align-items:center}
.usage{font-variant-numeric:tabular-nums;font-weight:600}
.rate{font-size:13px;margin:2px 0;display:flex;gap:8px;align-items:center}
.bar{flex:0 0 220px;height:12px;background:#e4e7ec;border-radius:6px;overflow:hidden}
.bar span{display:block;height:100%;background:#2e90fa}
.bar.full span{background:#f79009}.bar.over span{background:#d92d20}
.flag{font-size:12px;padding:1px 6px;border-radius:4px;background:#fef0c7;color:#93370d}
.desc,.counters{color:#475467;font-size:13px;margin:2px 0}
table{border-collapse:collapse;margin:6px 0;font-size:13px;width:100%}
th{text-align:left;color:#475467;font-weight:600;border-bottom:1px solid #dde1e7;padding:2px 8px}
td{padding:2px 8px;border-bottom:1px solid #f0f2f5;font-variant-numeric:tabular-nums}
td.num,th.num{text-align:right}
.none{color:#98a2b3;font-size:13px;margin:4px 0}
.problem{color:#b42318;font-size:13px}
h3{font-size:13px;margin:8px 0 0;color:#344054}
#events td.kind{font-weight:600}
""" + "".join(f".w{p}{{width:{p}%}}" for p in range(0, 101, 5))

SCRIPT = """
(function(){
  var every = Number(document.body.dataset.refresh) * 1000;
  function tick(){
    fetch(location.href, {cache: 'no-store'}).then(function(r){ return r.text(); })
    .then(function(text){
      var doc = new DOMParser().parseFromString(text, 'text/html');
      var fresh = doc.getElementById('content');
      if (!fresh) throw new Error('no content');
      document.getElementById('content').replaceWith(fresh);
      document.getElementById('updated').textContent = doc.getElementById('updated').textContent;
      document.getElementById('stale').style.display = 'none';
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
    }).catch(function(){
      document.getElementById('stale').style.display = 'block';
    }).finally(function(){ setTimeout(tick, every); });
  }
  setTimeout(tick, every);
})();
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own inline style and script may run; it may only fetch from where it came.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src {_sha256(STYLE)}; script-src {_sha256(SCRIPT)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def _e(v: object) -> str:
    return escape("" if v is None else str(v), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], num: Sequence[int] = (),
           row_attrs: Sequence[str] = ()) -> str:  # fmt: skip
    head = "".join(
        f'<th class="num">{_e(h)}</th>' if i in num else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for j, r in enumerate(rows):
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if i in num else f"<td>{_e(c)}</td>"
            for i, c in enumerate(r)
        )
        attrs = row_attrs[j] if j < len(row_attrs) else ""
        body.append(f"<tr{attrs}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _bar(used: int, slots: int) -> str:
    pct = 100.0 if slots <= 0 else min(100.0, 100.0 * used / slots)
    step = 5 * round(pct / 5) if pct < 100 or used >= slots else 95  # full only when full
    cls = "bar over" if used > slots else ("bar full" if used >= slots else "bar")
    return f'<div class="{cls}" title="{used} of {slots}"><span class="w{step}"></span></div>'


def _holders(s: Snapshot) -> str:
    if not s.holders:
        return '<p class="none">no holders</p>'
    now = s.now_ms

    def row(h: Holder) -> list[object]:
        if h.garbage:
            return [h.lease_id, "?", "unreadable record", "", "", "", "", ""]
        return [
            h.lease_id,
            h.occupy,
            h.host,
            h.pid or "",
            h.worker,
            h.label,
            duration((now - h.acquired_ms) / 1000) if h.acquired_ms else "?",
            duration((h.expires_ms - now) / 1000) if h.expires_ms else "?",
        ]

    return _table(
        ["lease", "occupy", "host", "pid", "worker", "label", "age", "expires in"],
        [row(h) for h in s.holders],
        num=(1, 3, 6, 7),
        row_attrs=[f' class="holder" data-lease="{_e(h.lease_id)}"' for h in s.holders],
    )


def _waiters(s: Snapshot) -> str:
    if not s.waiters:
        return '<p class="none">nobody waiting</p>'
    now = s.now_ms
    rows = []
    for i, (w, r) in enumerate(zip(s.waiters, waiter_reasons(s), strict=True)):
        waited = duration((now - w.arrived_ms) / 1000) if w.arrived_ms else "?"
        rows.append(
            [i + 1, w.occupy, w.priority, w.host, w.pid or "", w.worker, w.label, waited, r.text]
        )
    return _table(
        ["#", "occupy", "priority", "host", "pid", "worker", "label", "waiting", "why"],
        rows,
        num=(0, 1, 2, 4, 7),
        row_attrs=[
            f' class="waiter" data-ticket="{_e(w.ticket_id)}" data-cause="{_e(r.cause.value)}"'
            for w, r in zip(s.waiters, waiter_reasons(s), strict=True)
        ],
    )


def _limit(st: LimitStats) -> str:
    name = _e(st.name)
    problems = "".join(f'<p class="problem">{_e(m)}</p>' for m in st.messages())
    s = st.snapshot
    if s is None:
        return (
            f'<section class="limit" data-limit="{name}"><h2>{name} '
            f'<span class="flag">unreadable</span></h2>{problems}</section>'
        )
    cfg, c = s.config, s.counters
    flags = "" if cfg.enabled else '<span class="flag">disabled: admits everyone</span>'
    cap = cfg.total if cfg.is_template else cfg.slots
    if cfg.is_template:
        flags += f'<span class="flag">template: {s.n_keys} key(s)</span>'
    if cfg.template:
        flags += f'<span class="flag">made from {_e(cfg.template)}</span>'
    usage = (
        f'<span class="usage">{s.used} / {cap}</span>{_bar(s.used, cap)}'
        if cap is not None
        else f'<span class="usage">{s.used} held</span>'
    )
    rate = ""
    if cfg.rate is not None:
        room = "now" if not s.rate_room_ms else f"in {duration(s.rate_room_ms / 1000)}"
        rate = (
            f'<div class="rate" data-rate-used="{s.rate_in_window}" data-rate="{_e(cfg.rate)}">'
            f"rate {_e(cfg.rate)}{' (spread)' if cfg.spread else ''}: {s.rate_in_window} "
            f"used in the window{_bar(s.rate_in_window, cfg.rate.units)} next unit free {room}"
            "</div>"
        )
    desc = f'<p class="desc">{_e(cfg.description)}</p>' if cfg.description else ""
    more = st.leases - len(s.holders)
    more_h = f'<p class="none">{more} more holder(s) not shown</p>' if more > 0 else ""
    counters = (
        f"acquired {c.acquired} · released {c.released} · expired {c.expired} · "
        f"revoked {c.revoked} · timed out {c.timed_out} · wait p50 "
        f"{duration(wait_quantile(c, 0.5))}, p95 {duration(wait_quantile(c, 0.95))}"
    )
    return (
        f'<section class="limit" data-limit="{name}" data-used="{s.used}" '
        f'data-slots="{"" if cap is None else cap}" data-leases="{st.leases}" '
        f'data-waiters="{st.waiters}">'
        f'<h2><span class="name">{name}</span>{usage}{flags}</h2>'
        f"{rate}"
        f"{desc}"
        f'<p class="counters">{_e(counters)}</p>{problems}'
        f"<h3>holders ({st.leases})</h3>{_holders(s)}{more_h}"
        f"<h3>waiting ({st.waiters})</h3>{_waiters(s)}"
        "</section>"
    )


def _events(events: Sequence[dict[str, Any]] | None) -> str:
    if events is None:
        return ""
    if not events:
        body = '<p class="none">no events recorded</p>'
    else:
        body = _table(
            ["time", "event", "limits", "occupy", "lease", "holder", "detail"],
            [
                [
                    time.strftime("%H:%M:%S", time.localtime(ev.get("time", 0))),
                    ev.get("kind", ""),
                    ", ".join(ev.get("names", [])),
                    ev.get("occupy") or "",
                    ev.get("lease_id", ""),
                    " ".join(str(x) for x in (ev.get("host"), ev.get("pid"), ev.get("label")) if x),
                    ev.get("detail", ""),
                ]
                for ev in events
            ],
            num=(3,),
            row_attrs=[f' class="event" data-kind="{_e(ev.get("kind", ""))}"' for ev in events],
        )
    return f'<section class="limit" id="events"><h2>recent events</h2>{body}</section>'


def status_page(
    namespace: str,
    stats: Sequence[LimitStats],
    *,
    events: Sequence[dict[str, Any]] | None = None,
    error: str | None = None,
    refresh: float = DEFAULT_REFRESH,
) -> str:
    """The whole page. ``error`` (e.g. Redis unreachable) is shown instead of the limits."""
    updated = time.strftime("%Y-%m-%d %H:%M:%S")
    if error is not None:
        content = f'<p class="problem" id="error">{_e(error)}</p>'
    elif not stats:
        content = (
            f'<p class="none">no limits in namespace {_e(namespace)} '
            "(create one: slotkeeper create NAME --slots N)</p>"
        )
    else:
        content = "".join(_limit(st) for st in stats)
    content += _events(events)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>slotkeeper · {_e(namespace)}</title>"
        f'<noscript><meta http-equiv="refresh" content="{refresh:g}"></noscript>'
        f"<style>{STYLE}</style></head>"
        f'<body data-refresh="{refresh:g}" data-refreshes="0">'
        f'<header><h1>slotkeeper</h1><span class="meta">namespace {_e(namespace)}</span>'
        f'<span class="meta">updated <span id="updated">{updated}</span> '
        f"(every {refresh:g} s)</span></header>"
        '<div id="stale">cannot reach the daemon: showing the last data</div>'
        f'<main id="content">{content}</main>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )

"""The daemon's status page and JSON API in a real headless browser (chromium + selenium), served by
a real daemon process over a real Redis: the page renders with no external assets and no script or
policy errors, its numbers match Redis, and a new holder appears within one refresh."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slotkeeper.broker.client import Broker
from slotkeeper.broker.records import QUEUED
from slotkeeper.limiter import Limiter
from tests.support.browser import headless_chromium
from tests.support.redisproc import RedisProc
from tests.test_daemon import DaemonProc, daemons, wait_for

__all__ = ["daemons"]


READ_PAGE = """
var out = {};
document.querySelectorAll('section.limit[data-limit]').forEach(function(sec){
  var holders = {};
  sec.querySelectorAll('tr.holder').forEach(function(row){
    holders[row.dataset.lease] = Array.from(row.cells).map(function(c){ return c.textContent; });
  });
  var waiters = Array.from(sec.querySelectorAll('tr.waiter')).map(function(row){
    return [row.dataset.ticket, row.dataset.cause];
  });
  var usage = sec.querySelector('.usage');
  var rate = sec.querySelector('.rate');
  out[sec.dataset.limit] = {used: Number(sec.dataset.used), slots: Number(sec.dataset.slots),
    usage_text: usage ? usage.textContent : null, holders: holders, waiters: waiters,
    rate: rate ? rate.dataset.rate : null,
    rate_used: rate ? Number(rate.dataset.rateUsed) : null};
});
out.__events__ = Array.from(document.querySelectorAll('tr.event')).map(function(row){
  return [row.dataset.kind, row.cells[4].textContent, row.cells[5].textContent];
});
return out;
"""


def page_limits(driver: Any) -> dict[str, dict[str, Any]]:
    """What the page shows per limit (read in one script call: the page may refresh meanwhile)."""
    shown: dict[str, Any] = driver.execute_script(READ_PAGE)
    shown["__events__"] = [tuple(e) for e in shown["__events__"]]
    for k, v in shown.items():
        if k != "__events__":
            v["waiters"] = [tuple(w) for w in v["waiters"]]
    return shown


def refreshes(driver: Any) -> int:
    return int(driver.execute_script("return Number(document.body.dataset.refreshes)"))


def severe_console(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_status_page_matches_redis_and_refreshes(
    redis_server: RedisProc,
    namespace: str,
    daemons: Callable[..., DaemonProc],
    tmp_path: Path,
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    lim = Limiter(redis_server.url, namespace, ttl=30)
    b.create_limit("gpu:0", 2, description="the first card")
    b.create_limit("db", 3)
    b.create_limit("print", 1, enabled=False)
    b.create_limit("api", 4, rate="10/min", description="slots and a rate")
    lim.rate_limit("api", occupy=3)
    held = [lim.acquire("gpu:0", label="train-a"), lim.acquire("db", occupy=2, label="etl")]
    # a waiter on gpu:0 (needs 2, 1 free) and one of higher priority on db
    b.acquire(["gpu:0"], "wait-big", occupy=2, ttl_ms=60_000, wait=True)
    assert b.acquire(["db"], "wait-db", occupy=2, ttl_ms=60_000, priority=5).status == QUEUED
    d = daemons(redis_server.url, namespace, "--interval", "0.2")
    code, html = d.get("/")
    assert code == 200
    # self-contained: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=|@import|url\(|<link""", html, re.I), html[:2000]

    with headless_chromium() as driver:
        driver.get(d.base + "/?refresh=1")
        assert "slotkeeper" in driver.title and namespace in driver.title
        shown = page_limits(driver)
        assert set(shown) == {"gpu:0", "db", "print", "api", "__events__"}
        assert shown["api"]["rate_used"] == 3 and shown["api"]["rate"] == "10/min"
        for name in ("gpu:0", "db", "print", "api"):
            snap = b.snapshot(name)
            assert (shown[name]["used"], shown[name]["slots"]) == (snap.used, snap.config.slots)
            assert shown[name]["usage_text"] == f"{snap.used} / {snap.config.slots}"
            assert set(shown[name]["holders"]) == {h.lease_id for h in snap.holders}
            assert [t for t, _ in shown[name]["waiters"]] == [w.ticket_id for w in snap.waiters]
        row = shown["gpu:0"]["holders"][held[0].id]
        assert row[1] == "1" and row[5] == "train-a" and row[3].isdigit()  # occupy, label, pid
        assert shown["gpu:0"]["waiters"] == [("wait-big", "slots")]
        assert shown["db"]["waiters"] == [("wait-db", "slots")]

        # the page refreshes itself: a new holder appears within one refresh
        n0 = refreshes(driver)
        wait_for(lambda: refreshes(driver) > n0, what="the page to refresh")
        late = lim.acquire("print", label="late-comer")
        n1 = refreshes(driver)
        wait_for(lambda: refreshes(driver) >= n1 + 2, what="one full refresh")
        shown = page_limits(driver)
        assert late.id in shown["print"]["holders"]
        assert shown["print"]["holders"][late.id][5] == "late-comer"
        # recent events, newest first: the late grant is on top
        assert shown["__events__"][0][:2] == ("grant", late.id)
        assert "late-comer" in shown["__events__"][0][2]
        driver.set_window_size(1280, 1900)  # the whole page, events included
        driver.save_screenshot(
            os.environ.get("SLOTKEEPER_SCREENSHOT") or str(tmp_path / "shot.png")
        )
        assert severe_console(driver) == []  # no CSP violation, no script error

        # the JSON API, read by the same browser
        driver.get(d.base + "/api/v1/limits")
        body = json.loads(driver.find_element("tag name", "body").text)
        assert {x["name"]: (x["used"], x["slots"]) for x in body["limits"]} == {
            n: (b.snapshot(n).used, b.snapshot(n).config.slots) for n in b.list_limits()
        }
        driver.get(d.base + "/api/v1/limits/gpu:0")
        one = json.loads(driver.find_element("tag name", "body").text)
        assert [h["lease_id"] for h in one["holders"]] == [
            h.lease_id for h in b.snapshot("gpu:0").holders
        ]
        assert one["queue"][0]["reason"]["cause"] == "slots"
        assert "train-a" in one["queue"][0]["reason"]["text"]
    for lease in [*held, late]:
        lease.release()
    assert d.stop() == 0


def test_status_page_shows_redis_outage_and_recovers(
    fresh_redis: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(fresh_redis.url, namespace)
    b.create_limit("x", 1)
    d = daemons(fresh_redis.url, namespace, "--interval", "0.2")
    with headless_chromium() as driver:
        driver.get(d.base + "/?refresh=1")
        assert "x" in page_limits(driver)
        fresh_redis.pause()
        try:
            n = refreshes(driver)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if driver.find_elements("id", "error"):
                    break
                time.sleep(0.2)
            assert "Redis unreachable" in driver.find_element("id", "error").text
            assert refreshes(driver) > n
        finally:
            fresh_redis.resume()
        wait_for(lambda: "x" in page_limits(driver), timeout=60, what="the limits to come back")
    assert d.stop() == 0

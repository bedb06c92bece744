"""The sans-IO protocol: ops are built and replies parsed without any Redis, and the status codes
are one table shared with Lua."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from slotkeeper.broker import protocol as P
from slotkeeper.broker import records as R
from slotkeeper.broker.codes import Status, lua_prelude
from slotkeeper.broker.errors import (
    BrokerError,
    LimitExists,
    LimitHeld,
    LimitNotFound,
    OccupyExceedsLimit,
    QueueFull,
)
from slotkeeper.broker.keys import Keys
from slotkeeper.broker.scripts import SCRIPT_NAMES, sha, source

KEYS = Keys("proto")


def lua_files() -> dict[str, str]:
    pkg = resources.files("slotkeeper.lua")
    return {f.name: f.read_text(encoding="utf-8") for f in pkg.iterdir() if f.name.endswith(".lua")}


def test_every_script_returns_codes_by_name_never_bare_numbers() -> None:
    for name, text in lua_files().items():
        bare = re.findall(r"return\s*\{\s*(\d+)", text)
        assert not bare, f"{name} returns bare status numbers {bare}: use the names"


def test_the_names_scripts_return_exist_in_the_table() -> None:
    names = {s.name for s in Status}
    for fname, text in lua_files().items():
        for used in re.findall(r"return\s*\{\s*([A-Z_]+)\b", text):
            assert used in names, f"{fname} returns {used}, which is not in Status"


def test_generated_prelude_declares_every_code_before_the_scripts() -> None:
    line = lua_prelude()
    for st in Status:
        assert st.name in line
    for name in SCRIPT_NAMES:
        assert source(name).startswith(line)
        assert len(sha(name)) == 40


def test_acquire_op_has_one_argument_layout() -> None:
    op = P.acquire(KEYS, ["a", "b"], "id1", occupy=2, ttl_ms=100, default_ttl_ms=5000,
                   priority=3, wait=True, channel="c", meta=b"\x80", default_slots=4,
                   recheck=True)
    assert op.script == "acquire"
    assert op.keys == tuple(KEYS.for_limits(["a", "b"]))
    assert op.args == (2, "a", "b", "id1", 2, 100, 5000, 3, 2, "c", b"\x80", 4, 0)
    assert P.acquire(KEYS, ["a"], "x", wait=False).args[7] == 0  # mode: try once
    assert P.acquire(KEYS, ["a"], "x", units_only=True).args[-1] == 1  # rate_limit: units only


def test_acquire_replies_parse_to_results_or_errors() -> None:
    parse = P.acquire(KEYS, ["a"], "id", occupy=3).parse
    got = parse([Status.GRANTED, 7, 1000, 30000])
    assert (got.status, got.token, got.expires_ms, got.ttl_ms) == (Status.GRANTED, 7, 1000, 30000)
    q = parse([Status.QUEUED, 2, 150])
    assert (q.status, q.position, q.next_check_ms) == (Status.QUEUED, 2, 150)
    r = parse([Status.QUEUED, 1, 0, 40])  # waiting for rate units due in 40 ms
    assert (r.status, r.due_ms) == (Status.QUEUED, 40)
    with pytest.raises(QueueFull):
        parse([Status.QUEUE_FULL, "a", 5])
    assert parse([Status.BUSY]).status == Status.BUSY
    with pytest.raises(LimitNotFound):
        parse([Status.NOT_FOUND, b"a"])
    with pytest.raises(OccupyExceedsLimit) as ei:
        parse([Status.OCCUPY_EXCEEDS, b"a", 2])
    assert ei.value.slots == 2 and ei.value.occupy == 3
    with pytest.raises(OccupyExceedsLimit) as ej:
        parse([Status.REJECTED, b"exceeds", b"a", 1])
    assert ej.value.slots == 1
    with pytest.raises(BrokerError):
        parse([99])


def test_other_replies() -> None:
    assert P.release(KEYS, ["a"], "id").parse([Status.OK]) is True
    assert P.release(KEYS, ["a"], "id").parse([Status.LOST]) is False
    with pytest.raises(LimitExists):
        P.limit_config(KEYS, "a", "create", []).parse([Status.EXISTS, b"a"])
    assert P.limit_config(KEYS, "a", "upsert", ["slots", 1]).parse(
        [Status.OK, 1, b"slots"]) == (True, ["slots"])
    with pytest.raises(LimitHeld):
        P.limit_delete(KEYS, "a").parse([Status.HELD, 2])
    assert P.limit_delete(KEYS, "a").parse([Status.MORE]) is False
    hb = P.heartbeat(KEYS, [("l1", ["a"], 100)], [("t1", ["b"], 200)])
    assert hb.args == (2, "a", "b", 1, "l1", 100, 1, "t1", 200)
    res = hb.parse([[b"l1"], [], [b"t1"], 5, [b"x"]])
    assert res == R.HeartbeatResult(["l1"], [], ["t1"], 5, ["x"])


@pytest.mark.parametrize("msg", ["g", "g 1 2", "g a b c", "g 1 2 3 4", "gx 1 2 3", "", "r",
                                 "g 1 2 3\x00"])
def test_malformed_grant_messages_are_only_nudges(msg: str) -> None:
    assert P.parse_grant_message(msg) is None


def test_notification_messages() -> None:
    g = P.parse_grant_message("g 5 1000 30000")
    assert g is not None and (g.token, g.expires_ms, g.ttl_ms) == (5, 1000, 30000)
    assert P.parse_reject_message("x exceeds 2 group A") == ("exceeds", 2, "group A")
    assert P.parse_reject_message("x missing 0 gone") == ("missing", 0, "gone")
    for bad in ("x", "x exceeds", "x exceeds two name", "y a 1 b"):
        assert P.parse_reject_message(bad) is None


def test_validation_rules_are_shared() -> None:
    with pytest.raises(ValueError):
        P.check_occupy(0)
    with pytest.raises(TypeError):
        P.check_slots("3")
    with pytest.raises(ValueError):
        P.check_names(["a", "a"])
    with pytest.raises(ValueError):
        P.check_seconds(-1, "op_timeout")


def test_lazy_reap_derives_key_names_the_way_keys_py_makes_them() -> None:
    """lua/_lib.lua key_layout: an idle key's five keys from its template's config key."""
    tpl, key = "tenant:*", "tenant:acme"
    tcfg = KEYS.limit(tpl)[0]
    base = tcfg[: -len("limit:" + tpl)]
    assert tcfg.endswith("limit:" + tpl)
    kinds = ("limit", "holders", "queue", "rate", "keys")
    assert KEYS.limit(key) == [base + kind + ":" + key for kind in kinds]
    lib = lua_files()["_lib.lua"]
    for kind in kinds:
        assert f"base .. '{kind}:' .. name" in lib

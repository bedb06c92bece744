"""Hand-picked mutants: each breaks one rule the design promises, in a copy of the code. Every one
must make at least one of its tests fail ("killed"); a mutant that survives is a rule no test
checks. ``old`` must occur exactly once in ``path``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files run against the mutant


QUEUE = "tests/test_core_queue_rules.py"
RUNTIME = "tests/test_lease_runtime.py"

MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "fifo: a newcomer may jump the queue (no head-of-line check in acquire)",
        "lua/_lib.lua",
        "      if h and h ~= id and (queued or prio <= (tonumber(hrec.p) or 0)) then\n",
        "      if h and h ~= id and queued then\n",
        (f"{QUEUE}::test_newcomer_never_jumps_the_queue",),
    ),
    Mutant(
        "late ask: an ask that arrives after its own withdrawal is served",
        "lua/acquire.lua",
        "if was_withdrawn(id) then return {LOST} end\n",
        "",
        (f"{QUEUE}::test_an_ask_arriving_after_its_withdrawal_is_refused",),
    ),
    Mutant(
        "late ask: a withdrawal leaves no mark when it finds nothing",
        "lua/cancel.lua",
        "  remember_withdrawn(id)\n  return {LOST}\n",
        "  return {LOST}\n",
        (f"{QUEUE}::test_an_ask_arriving_after_its_withdrawal_is_refused",),
    ),
    Mutant(
        "late ask: the release of a lease whose ask was re-sent leaves no mark",
        "lua/release.lua",
        "if ARGV[A0 + 3] == '1' then remember_withdrawn(id) end\n",
        "",
        (f"{QUEUE}::test_a_late_copy_of_a_resent_ask_is_refused_after_the_release",),
    ),
    Mutant(
        "late ask: the transports re-send an ask without noting it",
        "broker/transport.py",
        "        if tries == 2:\n            again = P.note_resent(op)\n",
        "",
        (
            f"{QUEUE}::test_a_late_copy_of_a_resent_ask_is_refused_after_the_release",
            f"{QUEUE}::test_the_async_transport_notes_a_resent_ask_too",
        ),
    ),
    Mutant(
        "late ask: a re-sent ask that would queue goes as a fresh ask, not a re-check",
        "broker/protocol.py",
        "    if at is not None and op.args[at] == MODE_ENQUEUE:\n",
        "    if False:\n",
        (f"{QUEUE}::test_a_resent_ask_never_starts_its_id_anew",),
    ),
    Mutant(
        "late ask: a re-check that finds nothing leaves no mark",
        "lua/acquire.lua",
        "  remember_withdrawn(id)\n  return {LOST}\nend\n",
        "  return {LOST}\nend\n",
        (
            f"{QUEUE}::test_a_re_check_that_finds_nothing_marks_the_id",
            f"{QUEUE}::test_a_resent_ask_never_starts_its_id_anew",
        ),
    ),
    Mutant(
        "slow release: a lease is no longer renewed once its release is asked for",
        "sdk/runtime.py",
        "    def release(self, lease: Lease) -> bool:\n        lease._releasing = True\n",
        "    def release(self, lease: Lease) -> bool:\n        self.drop_lease(lease)\n",
        (f"{RUNTIME}::test_a_release_that_takes_longer_than_the_ttl_keeps_its_lease",),
    ),
    Mutant(
        "slow release: a heartbeat that finds a releasing lease gone calls it lost",
        "sdk/runtime.py",
        "                if not x._releasing:  # else gone by its own release",
        "                if True:  # else gone by its own release",
        (f"{RUNTIME}::test_a_release_that_takes_longer_than_the_ttl_keeps_its_lease",),
    ),
    Mutant(
        "withdrawals: they run on the heartbeat thread (a hung one delays renewals)",
        "sdk/runtime.py",
        "        self._last = time.monotonic()\n        self.rt.beat()\n",
        "        self.rt.withdraw_due()\n        self._last = time.monotonic()\n"
        "        self.rt.beat()\n",
        (f"{RUNTIME}::test_background_withdrawals_never_delay_renewals",),
    ),
    Mutant(
        "withdrawals: given up one TTL after the ticket's, before a late grant's lease expires",
        "sdk/runtime.py",
        "                give_up = time.monotonic() + 2 * ttl_ms / 1000 + 1\n",
        "                give_up = time.monotonic() + ttl_ms / 1000 + 1\n",
        (f"{RUNTIME}::test_a_deferred_withdrawal_outlives_a_late_grant",),
    ),
    Mutant(
        "lazy purge: acquire does not purge expired holders",
        "lua/acquire.lua",
        "for _, name in ipairs(EFF) do purge_holders(name, PURGE_BATCH) end\n",
        "",
        (f"{QUEUE}::test_acquire_purges_expired_holders_without_a_daemon",),
    ),
    Mutant(
        "idle keys: an acquire never removes its template's idle keys (only the daemon does)",
        "lua/acquire.lua",
        "    reap_lazy(tname)\n",
        "",
        ("tests/test_templates.py::test_acquires_remove_idle_keys_without_a_daemon",),
    ),
    Mutant(
        "idle keys: a key whose only user is a waiter counts as idle and is removed",
        "lua/_lib.lua",
        "  local empty = used(name) == 0 and redis.call('ZCARD', L.holders) == 0\n"
        "    and redis.call('ZCARD', L.queue) == 0\n",
        "  local empty = used(name) == 0 and redis.call('ZCARD', L.holders) == 0\n",
        ("tests/test_templates.py::test_lazy_reap_never_removes_a_key_in_use",),
    ),
    Mutant(
        "metrics: a deleted run's counters leave its run-*:TAG aggregate (the counter goes down)",
        "broker/collector.py",
        "                if name not in now:\n                    self._carry(group, totals)\n",
        "                if name not in now:\n                    pass\n",
        ("tests/test_metrics.py::test_run_scoped_limits_aggregate_per_tag_across_runs",),
    ),
    Mutant(
        "push: no grant pass after set --slots",
        "lua/limit_config.lua",
        "purge_holders(name, PURGE_BATCH)\ngrant_pass(name)\n",
        "purge_holders(name, PURGE_BATCH)\n",
        (
            f"{QUEUE}::test_raising_slots_grants_the_waiters_at_once",
            "tests/test_core_basic.py::test_enabling_and_raising_slots_grants_waiters",
        ),
    ),
    Mutant(
        "push: pushed notifications never reach their waiter (only polls would be left)",
        "sdk/runtime.py",
        "        w.deliver(rest)\n",
        "        pass\n",
        (
            "tests/test_core_fairness.py::test_grants_are_pushed_not_polled",
            "tests/test_core_fairness.py::test_cross_limit_waiter_woken_by_release_of_other_limit",
        ),
    ),
    Mutant(
        "push: a pushed notification never wakes a waiting asyncio task",
        "sdk/runtime.py",
        "                self._loop.call_soon_threadsafe(self._aevent.set)\n",
        "                pass\n",
        ("tests/test_core_basic.py::test_async_waiter_is_woken",),
    ),
    Mutant(
        "heartbeat: a renewal does not extend the lease's expiry",
        "lua/heartbeat.lua",
        "  local exp = NOW + ttl\n",
        "  local exp = tonumber(rec.e)\n",
        ("tests/test_core_processes.py::test_sigkilled_holder_slot_granted_within_ttl_without_daemon",),
    ),
    Mutant(
        "slow wait: a per-call slow_wait (0: never log) is ignored",
        "sdk/limiter.py",
        "        return self.slow_wait if slow_wait is None else check_slow_wait(slow_wait)\n",
        "        return self.slow_wait\n",
        ("tests/test_wait_reasons.py::test_slow_wait_logs_one_info_line",),
    ),
    Mutant(
        "recheck hint: the earliest holder expiry is never told to waiters",
        "lua/_lib.lua",
        "  if next_exp > 0 then next_exp = next_exp - NOW end\n",
        "  next_exp = 0\n",
        (f"{QUEUE}::test_waiter_rechecks_at_the_earliest_expiry_without_a_daemon",),
    ),
    Mutant(
        "off by one: acquire admits only while use + occupy < slots",
        "lua/_lib.lua",
        "      if not units_only and c.slots and used(name) + occ > c.slots then other = true end\n",
        "      if not units_only and c.slots and used(name) + occ >= c.slots then other = true end\n",
        (f"{QUEUE}::test_slot_checks_are_exact",),
    ),
    Mutant(
        "off by one: acquire admits one more than slots",
        "lua/_lib.lua",
        "      if not units_only and c.slots and used(name) + occ > c.slots then other = true end\n",
        "      if not units_only and c.slots and used(name) + occ > c.slots + 1 then other = true end\n",
        (f"{QUEUE}::test_slot_checks_are_exact",),
    ),
    Mutant(
        "off by one: occupy == slots is refused as exceeding",
        "lua/_lib.lua",
        "  if not units_only and c.slots and occ > c.slots then return c.slots end\n",
        "  if not units_only and c.slots and occ >= c.slots then return c.slots end\n",
        (f"{QUEUE}::test_slot_checks_are_exact",),
    ),
    Mutant(
        "off by one: a queued request is granted only while use + occupy < slots",
        "lua/_lib.lua",
        "  local ok, w, d = assess(id, rec.n, rec.o, tonumber(rec.p) or 0, units_only, true)\n",
        "  local ok, w, d = assess(id, rec.n, rec.o + 1, tonumber(rec.p) or 0, units_only, true)\n",
        (f"{QUEUE}::test_slot_checks_are_exact",),
    ),
    Mutant(
        "off by one: a queued request with occupy == slots is rejected",
        "lua/_lib.lua",
        "    local cap = not (units_only and c.template) and exceeds(c, rec.o, units_only)\n",
        "    local cap = not (units_only and c.template) and exceeds(c, rec.o + 1, units_only)\n",
        (f"{QUEUE}::test_slot_checks_are_exact",),
    ),
    Mutant(
        "renew resurrects an expired lease",
        "lua/heartbeat.lua",
        "  if not rec or tonumber(rec.e) <= NOW then\n    table.insert(lost, id)\n",
        "  if not rec then\n    table.insert(lost, id)\n",
        (f"{QUEUE}::test_renew_never_resurrects_an_expired_lease",),
    ),
    Mutant(
        "ticket expiry: an expired ticket is renewed",
        "lua/heartbeat.lua",
        "  if not rec or tonumber(rec.e) <= NOW then\n    local lease",
        "  if not rec then\n    local lease",
        (f"{QUEUE}::test_an_expired_ticket_is_never_renewed",),
    ),
    Mutant(
        "recheck rule: a re-ask about a lost id starts it anew",
        "lua/acquire.lua",
        "if recheck then\n",
        "if false then\n",
        (f"{QUEUE}::test_a_re_ask_never_restarts_a_lost_request",),
    ),
    Mutant(
        "hostile records: text numbers are not coerced at load",
        "lua/_lib.lua",
        "  rec.o, rec.e = num(rec.o, 1, MAX_OCCUPY), num(rec.e, 0, MAX_MS)\n",
        "  if not (num(rec.o, 1, MAX_OCCUPY) and num(rec.e, 0, MAX_MS)) then return nil end\n",
        ("tests/test_faults_hostile.py::test_ticket_with_text_occupy_never_breaks_release",),
    ),
    Mutant(
        "hostile records: holder entries no lease backs are never swept",
        "lua/reclaim.lua",
        "    if not mine then table.insert(bad, m) end\n",
        "",
        ("tests/test_faults_hostile.py::test_crafted_holder_entries_are_swept",),
    ),
    Mutant(
        "sdk: a renewal makes the holder trust its lease forever (no client-side expiry)",
        "sdk/lease.py",
        "        self._valid_until = max(self._valid_until, sent_at + self.ttl)\n",
        "        self._valid_until = float('inf')\n",
        (f"{QUEUE}::test_a_holder_stops_trusting_its_lease_when_redis_goes_silent",),
    ),
    Mutant(
        "sdk: a lease the broker reports lost is kept as held",
        "sdk/runtime.py",
        "                    self.drop_lease(x)\n                    x._mark_lost()\n",
        "                    pass\n",
        (f"{QUEUE}::test_a_revoked_holder_learns_at_its_next_heartbeat",),
    ),
)

"""The Redis key schema: every key slotkeeper writes is named here, and nowhere else.

Every key of a namespace carries the hash tag ``{ns}``, so a namespace lives in one Redis Cluster
slot (multi-limit scripts stay atomic) and different namespaces spread over shards.

=====================================  ======  =================================================
key                                    type    holds
=====================================  ======  =================================================
``sk:{ns}:limits``                     SET     names of every limit in the namespace (own limits
                                               and templates; not the keys made from templates)
``sk:{ns}:templates``                  SET     names of the templates (names ending in ``*``)
``sk:{ns}:limit:<name>``               HASH    config (slots or ``none``, ttl ms, enabled, desc,
                                               rate_n, rate_p ms, spread, maxw, total, idle ms,
                                               created, updated), rate state (r_used units in
                                               the window, r_next ms for --spread) and counters
                                               (c_acquired, c_released, c_expired, c_revoked,
                                               c_timed_out, c_units, c_rejected, w1..w16
                                               wait-time buckets, w_sum_us: waits summed in
                                               microseconds; w_sum: the same in ms, written by
                                               earlier versions, still added when read). A key
                                               made from a template holds ``tpl`` (the
                                               template) instead of config.
``sk:{ns}:holders:<name>``             ZSET    lease id (plus ``id#2``..``id#occupy``) -> expiry ms
                                               (a template: the entries of all its keys)
``sk:{ns}:queue:<name>``               ZSET    waiting ticket id -> -priority*1e12 + arrival seq
``sk:{ns}:rate:<name>``                ZSET    grant batch ``"<id> <units>"`` -> grant time ms
                                               (the sliding window of a rate)
``sk:{ns}:keys:<template>``            ZSET    key made from the template -> last activity ms
``sk:{ns}:leases``                     HASH    lease id -> msgpack lease record
``sk:{ns}:tickets``                    HASH    ticket id -> msgpack ticket record
``sk:{ns}:ticket_exp``                 ZSET    ticket id -> expiry ms
``sk:{ns}:fence``                      STRING  fencing token / arrival sequence counter
``sk:{ns}:doctor``                     any     ``slotkeeper doctor``'s ACL probe (deleted at once)
``sk:{ns}:events``                     STREAM  audit events (broker/events.py), XADD MAXLEN ~ cap
``sk:{ns}:settings``                   HASH    namespace settings: events (0 = off), events_cap
``sk:{ns}:withdrawn``                  ZSET    request id -> ms until which a late ask under that
                                               id is refused: withdrawn requests (cancel.lua),
                                               released leases whose ask was sent twice
                                               (release.lua), re-sent asks whose re-check
                                               found nothing (acquire.lua)
``sk:{ns}:wake:<client>`` (channel)    PUBSUB  grant notifications to one process (not a key)
=====================================  ======  =================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slotkeeper.broker.errors import InvalidName, InvalidType

PREFIX = "sk"
MAX_NAME = 200
_NS_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# Wait-time histogram bucket bounds in ms (mirrors WAIT_BOUNDS in lua/_lib.lua); w16 is +Inf.
WAIT_BUCKETS_MS: tuple[int, ...] = (
    1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
)


def printable(text: str) -> str:
    """Text read from Redis made safe to print or export: bytes that were not UTF-8 (kept as
    surrogates when decoded) become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_namespace(ns: object) -> str:
    if not isinstance(ns, str):
        raise InvalidType(f"namespace must be a str, not {type(ns).__name__}")
    if not _NS_RE.match(ns):
        raise InvalidName(
            f"bad namespace {ns!r}: 1-64 characters among letters, digits, '_', '.', '-'"
        )
    return ns


def is_template(name: str) -> bool:
    """A template is a limit whose name ends in ``*``: ``tenant:*``."""
    return name.endswith("*")


def template_prefix(name: str) -> str:
    return name[:-1]


# Run-scoped limits (executors' ``scope="run"``): ``run-<run_id>:<tag>``, made when an executor
# starts and deleted when it shuts down. Metrics aggregate them per tag (see ``metrics_group``).
RUN_PREFIX = "run-"
RUN_GROUP_ID = "*"  # the run id in the name of a run-scoped limits' aggregate: ``run-*:<tag>``
_RUN_RE = re.compile(r"^run-([^:*]+):(.+)$")


def run_prefix(run_id: str) -> str:
    """The prefix of every limit of one executor run: ``run-<run_id>:``."""
    return f"{RUN_PREFIX}{run_id}:"


def metrics_group(name: str) -> str | None:
    """The aggregate a limit's metrics go to by default, or None if it has series of its own.

    The one rule of metric cardinality: a run-scoped limit ``run-<id>:<tag>`` goes to
    ``run-*:<tag>`` (one series per tag however many runs come and go). Keys made from a
    template go to the template: the scripts keep that aggregate in Redis (the template's own
    counters and holders), so the collector never lists such keys unless asked for per-key series.
    A run id with ``:`` or ``*`` in it is not recognised (the executors' ids have neither).
    """
    m = _RUN_RE.match(name)
    if m is None:  # ([^:*]+: an aggregate's own name ``run-*:<tag>`` is no run's)
        return None
    return f"{run_prefix(RUN_GROUP_ID)}{m.group(2)}"


def check_limit_name(name: object) -> str:
    """A limit or a template: a limit name, or one followed by ``*`` (``tenant:*``)."""
    if isinstance(name, str) and name.endswith("*"):
        if name == "*":
            raise InvalidName("a template needs a prefix before '*' (e.g. 'tenant:*')")
        if len(name) > MAX_NAME:
            raise InvalidName(
                f"limit name is {len(name)} characters long; the maximum is {MAX_NAME}"
            )
        check_name(name[:-1])
        return name
    return check_name(name)


def check_name(name: object) -> str:
    """A limit name: 1-200 printable characters, no leading/trailing space."""
    if not isinstance(name, str):
        raise InvalidType(f"limit name must be a str, not {type(name).__name__}")
    if not name:
        raise InvalidName("limit name must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidName(f"limit name is {len(name)} characters long; the maximum is {MAX_NAME}")
    if not name.isprintable():
        raise InvalidName(f"limit name {name!r} contains non-printable characters")
    if name != name.strip():
        raise InvalidName(f"limit name {name!r} has leading or trailing whitespace")
    if "*" in name:
        raise InvalidName(
            f"limit name {name!r}: '*' may only be the last character (a template, created with "
            "`slotkeeper create 'prefix*'`; acquire names made from it)"
        )
    if "{" in name or "}" in name:
        raise InvalidName(
            f"limit name {name!r} contains '{{' or '}}' (only the templates {{worker}} and "
            "{host} are allowed, and they are resolved before use)"
        )
    return name


@dataclass(frozen=True)
class Keys:
    """Key names of one namespace."""

    namespace: str

    @property
    def base(self) -> str:
        return f"{PREFIX}:{{{self.namespace}}}"

    def fixed(self) -> list[str]:
        b = self.base
        return [
            f"{b}:limits",
            f"{b}:leases",
            f"{b}:tickets",
            f"{b}:ticket_exp",
            f"{b}:fence",
            f"{b}:templates",
            f"{b}:events",
            f"{b}:settings",
            self.withdrawn,
        ]

    def limit(self, name: str) -> list[str]:
        b = self.base
        return [
            f"{b}:limit:{name}",
            f"{b}:holders:{name}",
            f"{b}:queue:{name}",
            f"{b}:rate:{name}",
            f"{b}:keys:{name}",
        ]

    def for_limits(self, names: list[str] | tuple[str, ...]) -> list[str]:
        keys = self.fixed()
        for n in names:
            keys.extend(self.limit(n))
        return keys

    @property
    def limits(self) -> str:
        return f"{self.base}:limits"

    @property
    def templates(self) -> str:
        return f"{self.base}:templates"

    def template_keys(self, template: str) -> str:
        return f"{self.base}:keys:{template}"

    @property
    def withdrawn(self) -> str:
        return f"{self.base}:withdrawn"

    @property
    def leases(self) -> str:
        return f"{self.base}:leases"

    @property
    def tickets(self) -> str:
        return f"{self.base}:tickets"

    @property
    def events(self) -> str:
        """The audit event stream (broker/events.py)."""
        return f"{self.base}:events"

    @property
    def settings(self) -> str:
        """Namespace settings: ``events`` (0/1), ``events_cap``."""
        return f"{self.base}:settings"

    @property
    def doctor_probe(self) -> str:
        """Written and deleted by ``slotkeeper doctor``'s permission probe."""
        return f"{self.base}:doctor"

    def wake_channel(self, client_id: str) -> str:
        return f"{self.base}:wake:{client_id}"

    def pattern(self) -> str:
        """ACL / SCAN pattern matching every key of the namespace."""
        return f"{self.base}:*"

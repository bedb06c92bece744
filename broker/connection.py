"""Redis connections from URLs: redis://, rediss://, unix://, redis+sentinel:// and redis+cluster://.

``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` follows the master that
the sentinels name (and re-resolves it after a failover); ``?sentinel_password=`` authenticates
to the sentinels. ``redis+cluster://[user:password@]host:port[,host:port...]`` talks to a Redis
Cluster (any reachable node will do; the rest are discovered). The ``rediss`` forms use TLS.
Query options: ``socket_timeout``, ``socket_connect_timeout`` (seconds) and the TLS files
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` (plus ``ssl_password``, ``ssl_cert_reqs``,
``ssl_check_hostname``), e.g. ``rediss://host:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&
ssl_keyfile=/c.key``.
Passwords never leave this module in clear text: use :func:`redact` for anything printed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.sentinel import Sentinel

from slotkeeper.broker.deadline import (
    DeadlineConnection,
    DeadlineSentinelConnection,
    DeadlineSentinelSSLConnection,
    DeadlineSSLConnection,
    DeadlineUnixConnection,
)
from slotkeeper.broker.errors import BrokerUnavailable, InvalidArgument

ENV_URL = "SLOTKEEPER_URL"
ENV_URL_FILE = "SLOTKEEPER_URL_FILE"
ENV_NAMESPACE = "SLOTKEEPER_NAMESPACE"
DEFAULT_NAMESPACE = "default"

_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
# password=, sentinel_password=, ssl_password= ... in the query string
_QS_PW_RE = re.compile(r"(?P<k>(?:^|[?&])[A-Za-z_]*password=)[^&\s]*")
_QUERY_OPT_RE = re.compile(r"[?&][A-Za-z_]+=")
# a URL inside a longer text (an error message): up to whitespace or a quote
_URL_IN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")

# Client-side socket settings: a bounded wait for Redis, never a hang (see Broker retries).
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo, @rest)`` of a URL whose password may hold raw ``@ / ? # %``, or None
    when it has no userinfo. The userinfo ends at the last '@' with no query option (``?name=``)
    before it (an '@' inside a query option is not taken for it), else at the last '@'."""
    i = url.find("://")
    if i < 0:
        return None
    head, rest = url[: i + 3], url[i + 3 :]
    ats = [m.start() for m in re.finditer("@", rest)]
    if not ats:
        return None
    plain = [a for a in ats if not _QUERY_OPT_RE.search(rest[:a])]
    at = plain[-1] if plain else ats[-1]
    return head, rest[:at], rest[at:]


def _redact_url(url: str) -> str:
    parts = _split_userinfo(url)
    if parts is not None:
        head, userinfo, rest = parts
        if ":" in userinfo:
            url = head + userinfo.split(":", 1)[0] + ":***" + rest
    return url


def redact(url: str | None) -> str:
    """The URL (or a message quoting URLs) with any password replaced by ``***``: in the userinfo
    and in ``*password=`` query options. Parses the URL rather than trusting URL syntax, so a
    password pasted with raw ``# ? @ / %`` in it is hidden whole."""
    if not url:
        return "(embedded)"
    if any(c.isspace() for c in url.strip()):
        out = _URL_IN_TEXT_RE.sub(lambda m: _redact_url(m.group(0)), url)
    else:
        out = _redact_url(url)
    return _QS_PW_RE.sub(lambda m: f"{m['k']}***", out)


def has_password(url: str | None) -> bool:
    """Whether the URL carries a secret (a userinfo password or a ``*password=`` option)."""
    return bool(url) and redact(url) != url


def read_url_file(path: str) -> str:
    """The URL stored in a file (``SLOTKEEPER_URL_FILE``): its first non-empty line. A relative
    path is looked up in ``$CREDENTIALS_DIRECTORY`` when systemd set it (``LoadCredential=``)."""
    p = Path(path)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not p.is_absolute() and creds:
        p = Path(creds) / p
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read the Redis URL from {str(p)!r} ({ENV_URL_FILE}): {exc.strerror or exc}"
        ) from None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise InvalidArgument(f"{str(p)!r} ({ENV_URL_FILE}) holds no Redis URL")


def configured_url(url: str | None = None) -> str | None:
    """The explicit URL, else SLOTKEEPER_URL, else the file SLOTKEEPER_URL_FILE names, else None
    (meaning: the embedded broker)."""
    if url or os.environ.get(ENV_URL):
        return url or os.environ.get(ENV_URL)
    path = os.environ.get(ENV_URL_FILE)
    return read_url_file(path) if path else None


def configured_namespace(namespace: str | None = None) -> str:
    return namespace or os.environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE


def _common(kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": SOCKET_TIMEOUT,
        "health_check_interval": 15,
        "retry_on_timeout": False,
    }
    out.update(kwargs)
    return out


def _scheme(url: str) -> str:
    if not isinstance(url, str) or "://" not in url:
        raise InvalidArgument(
            f"bad Redis URL {redact(str(url))!r}: expected e.g. redis://host:6379/0"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise InvalidArgument(
            f"unsupported URL scheme {scheme!r} in {redact(url)!r}: "
            f"use one of {', '.join(_SCHEMES)}"
        )
    return scheme


def connect(url: str, **kwargs: Any) -> Redis:
    """A redis-py client for ``url`` whose I/O honours :mod:`slotkeeper.broker.deadline`;
    raises InvalidArgument for a URL it cannot use."""
    scheme = _scheme(url)
    if scheme.endswith("+sentinel"):
        return _sentinel(url, **kwargs)
    if scheme.endswith("+cluster"):
        return _cluster(url, **kwargs)
    kwargs.setdefault("connection_class", _DEADLINE_CLASSES[scheme])
    try:
        return Redis.from_url(url, **_common(kwargs))
    except ValueError as exc:
        raise InvalidArgument(f"bad Redis URL {redact(url)!r}: {exc}") from None


def connect_async(url: str, **kwargs: Any) -> AsyncRedis:
    """A ``redis.asyncio`` client for ``url`` (same URL forms and options as :func:`connect`).
    Its calls are bounded by the asyncio transport (``asyncio.wait_for``)."""
    scheme = _scheme(url)
    if scheme.endswith("+sentinel"):
        return _sentinel(url, _async=True, **kwargs)  # type: ignore[return-value]
    if scheme.endswith("+cluster"):
        return _cluster(url, _async=True, **kwargs)  # type: ignore[return-value]
    try:
        return AsyncRedis.from_url(url, **_common(kwargs))
    except ValueError as exc:
        raise InvalidArgument(f"bad Redis URL {redact(url)!r}: {exc}") from None


_DEADLINE_CLASSES: dict[str, type] = {
    "redis": DeadlineConnection,
    "rediss": DeadlineSSLConnection,
    "unix": DeadlineUnixConnection,
}


# Query options understood for redis+sentinel:// and redis+cluster:// URLs (plain redis://,
# rediss:// and unix:// URLs go through redis-py's own parser, which takes the same names).
_FLOAT_OPTS = ("socket_timeout", "socket_connect_timeout")
_BOOL_OPTS = ("ssl_check_hostname",)
_STR_OPTS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_password",
    "ssl_cert_reqs",
    "ssl_ca_path",
)


def _query_options(url: str, query: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for k, v in parse_qsl(query):
        try:
            if k in _FLOAT_OPTS:
                opts[k] = float(v)
            elif k in _BOOL_OPTS:
                opts[k] = v.lower() in ("1", "true", "yes", "on")
            elif k in _STR_OPTS or k in extra:
                opts[k] = v
            else:
                raise InvalidArgument(f"unknown option {k!r} in Redis URL {redact(url)!r}")
        except ValueError:
            raise InvalidArgument(f"bad value for {k!r} in Redis URL {redact(url)!r}") from None
    return opts


def _split_netloc(
    url: str,
    netloc: str,
    default_port: int,
) -> tuple[str | None, str | None, list[tuple[str, int]]]:
    """``[user[:password]@]host:port[,host:port...]`` -> (username, password, addresses)."""
    username = password = None
    if "@" in netloc:
        cred, netloc = netloc.rsplit("@", 1)
        if ":" in cred:
            u, p = cred.split(":", 1)
            username, password = unquote(u) or None, unquote(p)
        else:
            username = unquote(cred) or None
    hosts: list[tuple[str, int]] = []
    for hp in netloc.split(","):
        host, _, port = hp.rpartition(":")
        if not host:
            host, port = port, str(default_port)
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError:
            raise InvalidArgument(f"bad address {hp!r} in {redact(url)!r}") from None
        if not host.strip("[]"):
            raise InvalidArgument(f"bad address {hp!r} in {redact(url)!r}")
    return username, password, hosts


def _sentinel(url: str, _async: bool = False, **kwargs: Any) -> Redis:
    parts = urlsplit(url)
    username, password, hosts = _split_netloc(url, parts.netloc, 26379)
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise InvalidArgument(f"sentinel URL {redact(url)!r} needs a service name: .../mymaster")
    service = path[0]
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError:
        raise InvalidArgument(f"bad database number in {redact(url)!r}") from None
    query = _query_options(url, parts.query, extra=("sentinel_password",))
    sentinel_password = query.pop("sentinel_password", None)
    opts = _common(kwargs)
    opts.update(query)
    opts.update({"db": db, "username": username, "password": password})
    tls = parts.scheme.startswith("rediss")
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT}
    if parts.scheme.startswith("rediss"):  # TLS to the sentinels too, with the same TLS options
        sentinel_kwargs.update({k: v for k, v in query.items() if k.startswith("ssl_")})
        sentinel_kwargs["ssl"] = True
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    if _async:
        from redis.asyncio.sentinel import Sentinel as AsyncSentinel

        if tls:
            opts["ssl"] = True
        asentinel = AsyncSentinel(hosts, sentinel_kwargs=sentinel_kwargs, **opts)  # type: ignore[no-untyped-call]
        return cast(Redis, asentinel.master_for(service, **opts))
    opts["connection_class"] = DeadlineSentinelSSLConnection if tls else DeadlineSentinelConnection
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **opts)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(service, **opts)  # type: ignore[no-untyped-call]
    return client


def _cluster(url: str, _async: bool = False, **kwargs: Any) -> Redis:
    """A RedisCluster from ``redis+cluster://[user:password@]host:port[,host:port...]``.

    Every key of a namespace shares one hash tag, so each script runs on the one node that owns the
    namespace's slot; the client discovers the rest of the cluster from any startup node."""
    from redis.cluster import ClusterNode, RedisCluster
    from redis.exceptions import RedisClusterException, RedisError

    parts = urlsplit(url)
    username, password, hosts = _split_netloc(url, parts.netloc, 6379)
    if parts.path.strip("/") not in ("", "0"):
        raise InvalidArgument(f"Redis Cluster has only database 0: {redact(url)!r}")
    opts = _common(kwargs)
    opts.pop("retry_on_timeout", None)  # RedisCluster: deprecated (timeouts always retried)
    opts.update(_query_options(url, parts.query))
    opts.update({"username": username, "password": password})
    if parts.scheme.startswith("rediss"):
        opts["ssl"] = True
    if _async:  # connects lazily, on its first command
        from redis.asyncio.cluster import ClusterNode as AsyncNode
        from redis.asyncio.cluster import RedisCluster as AsyncCluster

        opts.pop("health_check_interval", None)
        return AsyncCluster(  # type: ignore[return-value]
            startup_nodes=[AsyncNode(h, p) for h, p in hosts], **opts)
    nodes = [ClusterNode(h, p) for h, p in hosts]  # type: ignore[no-untyped-call]
    try:  # RedisCluster connects at once, to learn the slot map
        client = RedisCluster(startup_nodes=nodes, **opts)
    except (RedisError, RedisClusterException) as exc:
        raise BrokerUnavailable(
            f"Redis Cluster at {redact(url)} unreachable: {type(exc).__name__}: "
            f"{redact(str(exc))[:300]}"
        ) from exc
    # RedisCluster offers the subset of the Redis API that slotkeeper uses (scripts with keys,
    # hashes, sets, pubsub, TIME); the Broker treats it as a Redis client.
    return cast(Redis, client)

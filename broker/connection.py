"""Redis connections from URLs: redis://, rediss://, unix:// and redis+sentinel://.

``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]`` follows the master that
the sentinels name (and re-resolves it after a failover). Query options pass through to redis-py
(e.g. ``rediss://host:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=...&ssl_keyfile=...``).
Passwords never leave this module in clear text: use :func:`redact` for anything printed.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis import Redis
from redis.sentinel import Sentinel

from slotkeeper.broker.errors import InvalidArgument

ENV_URL = "SLOTKEEPER_URL"
ENV_NAMESPACE = "SLOTKEEPER_NAMESPACE"
DEFAULT_NAMESPACE = "default"

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
_PW_RE = re.compile(r"(?P<pre>://[^:/@]*:)(?P<pw>[^@]*)(?P<post>@)")
_QS_PW_RE = re.compile(r"(?P<k>(?:^|[?&])password=)[^&]*")

# Client-side socket settings: a bounded wait for Redis, never a hang (see Broker retries).
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 5.0


def redact(url: str | None) -> str:
    """The URL with any password replaced by ``***``."""
    if not url:
        return "(embedded)"
    out = _PW_RE.sub(lambda m: f"{m['pre']}***{m['post']}", url)
    return _QS_PW_RE.sub(lambda m: f"{m['k']}***", out)


def configured_url(url: str | None = None) -> str | None:
    """The explicit URL, else SLOTKEEPER_URL, else None (meaning: the embedded broker)."""
    return url or os.environ.get(ENV_URL) or None


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


def connect(url: str, **kwargs: Any) -> Redis:
    """A redis-py client for ``url``; raises InvalidArgument for a URL it cannot use."""
    if not isinstance(url, str) or "://" not in url:
        raise InvalidArgument(f"bad Redis URL {redact(str(url))!r}: expected e.g. redis://host:6379/0")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise InvalidArgument(
            f"unsupported URL scheme {scheme!r} in {redact(url)!r}: use one of {', '.join(_SCHEMES)}"
        )
    if scheme.endswith("+sentinel"):
        return _sentinel(url, **kwargs)
    try:
        return Redis.from_url(url, **_common(kwargs))
    except ValueError as exc:
        raise InvalidArgument(f"bad Redis URL {redact(url)!r}: {exc}") from None


def _sentinel(url: str, **kwargs: Any) -> Redis:
    parts = urlsplit(url)
    netloc = parts.netloc
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
            host, port = port, "26379"
        try:
            hosts.append((host.strip("[]"), int(port)))
        except ValueError:
            raise InvalidArgument(f"bad sentinel address {hp!r} in {redact(url)!r}") from None
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise InvalidArgument(f"sentinel URL {redact(url)!r} needs a service name: .../mymaster")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    query = dict(parse_qsl(parts.query))
    opts = _common(kwargs)
    opts.update({"db": db, "username": username, "password": password})
    if parts.scheme.startswith("rediss"):
        opts["ssl"] = True
    for k, v in query.items():
        if k.startswith("ssl_"):
            opts[k] = v
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT}
    if query.get("sentinel_password"):
        sentinel_kwargs["password"] = query["sentinel_password"]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **opts)  # type: ignore[no-untyped-call]
    client: Redis = sentinel.master_for(service, **opts)  # type: ignore[no-untyped-call]
    return client

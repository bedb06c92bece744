"""Test certificates (a private CA, a server certificate for 127.0.0.1/localhost, a client
certificate) made with the openssl CLI, and a TLS-only private redis-server."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis

from tests.support.redisproc import RedisProc


@dataclass(frozen=True)
class Certs:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def cert(self, who: str) -> Path:
        return self.dir / f"{who}.crt"

    def key(self, who: str) -> Path:
        return self.dir / f"{who}.key"


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise RuntimeError("the TLS tests need the openssl command line tool")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(d: Path, who: str, cn: str, ca: str, ext: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{who}.key",
        "-out",
        f"{who}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=d,
    )
    (d / f"{who}.ext").write_text(ext)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{who}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-out",
        f"{who}.crt",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        f"{who}.ext",
        cwd=d,
    )


def make_certs(d: Path) -> Certs:
    """ca (trusted), server (127.0.0.1, localhost), client (clientAuth), and a second CA
    ("rogue") with its own client certificate, which the server must not trust."""
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN=slotkeeper test {ca}",
            cwd=d,
        )
    _signed(
        d,
        "server",
        "localhost",
        "ca",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    _signed(d, "client", "slotkeeper-client", "ca", "extendedKeyUsage=clientAuth\n")
    _signed(d, "rogue", "rogue-client", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    for p in d.glob("*.key"):
        p.chmod(0o600)
    return Certs(d)


class TlsRedisProc(RedisProc):
    """redis-server listening on TLS only (``--port 0``), client certificates required."""

    def __init__(self, certs: Certs) -> None:
        self.certs = certs
        super().__init__(tcp=True)
        self.extra = [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(certs.cert("server")),
            "--tls-key-file",
            str(certs.key("server")),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            "yes",
        ]

    def url_with(self, ca: Path | None, cert: Path | None, key: Path | None) -> str:
        q = []
        for name, p in (("ssl_ca_certs", ca), ("ssl_certfile", cert), ("ssl_keyfile", key)):
            if p is not None:
                q.append(f"{name}={quote(str(p))}")
        return f"rediss://127.0.0.1:{self.port}/0" + ("?" + "&".join(q) if q else "")

    @property
    def url(self) -> str:
        c = self.certs
        return self.url_with(c.ca, c.cert("client"), c.key("client"))

    def client(self, **kw: object) -> redis.Redis:
        c = self.certs
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=5,
            ssl=True,
            ssl_ca_certs=str(c.ca),
            ssl_certfile=str(c.cert("client")),
            ssl_keyfile=str(c.key("client")),
            **kw,
        )  # type: ignore[arg-type]

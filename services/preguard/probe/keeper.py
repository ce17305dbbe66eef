"""Holds the read ends of the event pipes while no probe runs, so the library's records wait there.

The library opens a pipe write-only and non-blocking: with no reader its writes fail and are
dropped. This small process (started by the probe, in its own session, so it outlives a probe
that is killed or restarted) receives a read descriptor of every pipe the probe reads, over a
unix socket (SCM_RIGHTS), and never reads them: the pipe stays open and fills up to its size;
the next probe reads what waited. Messages: `keep KEY` + one descriptor, `drop KEY`,
`only KEY...` (everything else is closed).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time
from pathlib import Path

_MAX = 64 * 1024


def serve(path: Path) -> None:
    held: dict[str, int] = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn:
            while True:
                try:
                    msg, fds, _flags, _addr = socket.recv_fds(conn, _MAX, 4)
                except OSError:
                    break
                if not msg:
                    for fd in fds:
                        os.close(fd)
                    break
                verb, *keys = msg.decode().split()
                if verb == "keep" and keys and fds:
                    if keys[0] in held:
                        os.close(held.pop(keys[0]))
                    held[keys[0]] = fds[0]
                    fds = fds[1:]
                elif verb == "drop":
                    for key in keys:
                        if key in held:
                            os.close(held.pop(key))
                elif verb == "only":
                    for key in set(held) - set(keys):
                        os.close(held.pop(key))
                for fd in fds:  # anything unexpected
                    os.close(fd)


class KeeperClient:
    """The probe's side: finds the keeper at `path` or starts one; every call is best effort."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def connect(self, start: bool = True, within: float = 5.0) -> bool:
        deadline = time.monotonic() + within
        started = False
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                if not start or time.monotonic() > deadline:
                    return False
                if not started:  # its own session: it outlives the probe, which is its purpose
                    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
                    argv = [sys.executable, "-m", "preguard.probe.keeper", str(self.path)]
                    os.posix_spawn(sys.executable, argv, os.environ, file_actions=devnull, setsid=True)
                    started = True
                time.sleep(0.02)
                continue
            self._sock = sock
            return True

    def _send(self, text: str, fds: list[int] | None = None) -> None:
        if self._sock is None:
            return
        try:
            socket.send_fds(self._sock, [text.encode()], fds or [])
        except OSError:
            self._sock.close()
            self._sock = None

    def keep(self, key: str, fd: int) -> None:
        self._send(f"keep {key}", [fd])

    def drop(self, key: str) -> None:
        self._send(f"drop {key}")

    def only(self, keys: list[str]) -> None:
        self._send(" ".join(["only", *keys]))

    def pid(self) -> int | None:
        """The keeper's process id (from the socket's peer credentials)."""
        if self._sock is None:
            return None
        creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid: int = struct.unpack("3i", creds)[0]
        return pid

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


if __name__ == "__main__":
    serve(Path(sys.argv[1]))

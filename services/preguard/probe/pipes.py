"""Reading one container's event pipe without blocking, and a token bucket to bound a flood."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
from collections.abc import Callable

from preguard.proto.abi import Record, RecordReader

F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ exists from Python 3.10 on Linux; spelled out for clarity
PIPE_SIZE = 1 << 20
READ_CHUNK = 64 * 1024  # per wake-up: a flooding pipe yields the loop to the others


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; take() says whether one was available."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now

    def take(self, now: float, n: int = 1) -> int:
        """How many of n are admitted (the rest are to be dropped and counted)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        admitted = min(n, int(self.tokens))
        self.tokens -= admitted
        return admitted


class PipeReader:
    """Owns the read end of one FIFO: decodes, counts garbage and hands whole records on.

    It also holds a write end open: without one, a FIFO whose last writer closed reports EOF at
    every poll and the loop would spin. The library never blocks on it (it writes non-blocking).
    """

    def __init__(self, fd: int, on_records: Callable[[list[Record]], None]) -> None:
        self.fd = fd
        self.ino = os.fstat(fd).st_ino
        self._keep = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._on_records = on_records
        self._reader = RecordReader()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bytes = 0
        with contextlib.suppress(OSError):  # the size is a wish: the host's pipe-max-size rules
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)

    @property
    def invalid(self) -> int:
        return self._reader.invalid

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.fd, self._readable)
        self._readable()  # records written while nobody read (a restarted probe) are waiting

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
            self._loop = None
        for fd in (self.fd, self._keep):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd = self._keep = -1

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            return  # closed under us; the owner reopens on its next check
        if data:
            self.bytes += len(data)
            records = self._reader.feed(data)
            if records:
                self._on_records(records)


def open_fifo(fd: int) -> int:
    """Checks that a descriptor opened O_RDONLY|O_NONBLOCK is a FIFO (else closes it, raises)."""
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("event pipe is not a FIFO")
    return fd

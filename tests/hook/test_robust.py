"""The application never hangs or dies because of the library: missing rules, corrupt rules, reload
under threads and forks, a pipe without reader or full or abandoned, descriptors closed under it,
calls from other constructors; AddressSanitizer clean."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from preguard.proto.abi import PIPE, RULES, Control
from tests.hook.conftest import BUILD, HOOK, Guard, policy


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret"
    p.write_text("s3cret")
    return p


def test_without_rules_everything_passes(guard: Guard, calls: Path, secret: Path) -> None:
    assert not (guard.dir / RULES).exists()
    assert guard.run([calls, "open", secret, ""]).stdout == "ok\n"
    assert guard.run([calls, "execv", "/usr/bin/echo", "hi"]).stdout == "hi\n"
    (guard.dir / "control").unlink()
    assert guard.run([calls, "open", secret, ""]).stdout == "ok\n"
    assert guard.events() == []


class Threads:
    """Drives hook/tests/snippets/threads.c (see its header for the protocol)."""

    def __init__(self, program: Path, n: int, path: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(program), str(n), str(path)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.say("") == "ready"

    def say(self, line: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        if line:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def finish(self) -> dict[str, int]:
        out, _ = self.proc.communicate("q\n", timeout=60)
        assert self.proc.returncode == 0, out
        words = out.split()
        return dict(zip(words[::2], map(int, words[1::2]), strict=True))


def test_a_corrupt_rules_file_keeps_the_last_good_rules_and_is_counted_once(
    guard: Guard, hook_build: Path, secret: Path
) -> None:
    guard.install(policy({"kind": "file", "path": str(secret)}))
    threads = Threads(hook_build / "tests/threads", 2, secret, guard.env())
    assert threads.say("p") == "prepared"
    data = bytearray((guard.dir / RULES).read_bytes())
    data[-1] ^= 0xFF  # checksum mismatch
    (guard.dir / "tmp").write_bytes(bytes(data))
    os.rename(guard.dir / "tmp", guard.dir / RULES)
    Control.publish(guard.dir / "control", 99)
    assert threads.say("f") == "phase 1"  # odd phase: still denied
    result = threads.finish()
    assert result["calls"] > 0 and result["late"] == 0
    assert guard.control().rules_errors == 1  # one process, one bad generation: counted once


def test_reload_reaches_a_running_multithreaded_process_within_one_call(
    guard: Guard, hook_build: Path, secret: Path
) -> None:
    """8 threads loop on open (half of them fork children too) while the rules flip four times."""
    threads = Threads(hook_build / "tests/threads", 8, secret, guard.env())
    for phase in range(1, 5):
        assert threads.say("p") == "prepared"
        guard.install(policy(*([{"kind": "file", "path": str(secret)}] if phase % 2 else [])))
        assert threads.say("f") == f"phase {phase}"
    result = threads.finish()
    assert result["calls"] > 8 * 20 * 4 and result["late"] == 0
    assert result["forks"] > 0 and result["fork_bad"] == 0
    assert guard.control().loaded_revision == 4


def test_no_reader_costs_a_counted_drop_not_the_process(
    hook_build: Path, tmp_path: Path, calls: Path, secret: Path
) -> None:
    guard = Guard(tmp_path / "pg", hook_build / "libpreguard-glibc.so")
    guard.close()  # nobody holds the pipe
    guard.install(policy({"kind": "file", "path": str(secret)}))
    assert guard.run([calls, "open", secret, ""]).stdout == "err 13\n"
    assert guard.control().drops == 1


def test_a_full_pipe_costs_drops_not_a_hang(guard: Guard, hook_build: Path, secret: Path) -> None:
    guard.install(policy({"kind": "file", "path": str(secret)}))
    n = 5000  # far more than 64 KiB of records; the test reads nothing meanwhile
    out = guard.run([hook_build / "tests/bench", "hit", str(n), str(secret)])
    assert out.returncode == 0
    state = guard.control()
    assert state.drops > 0 and state.drops + state.events == n
    assert len(guard.events()) == state.events


def test_a_reader_killed_mid_stream_is_no_sigpipe(hook_build: Path, tmp_path: Path, secret: Path) -> None:
    guard = Guard(tmp_path / "pg", hook_build / "libpreguard-glibc.so")
    guard.close()
    guard.install(policy({"kind": "file", "path": str(secret)}))
    reader = subprocess.Popen(["cat", str(guard.dir / PIPE)], stdout=subprocess.DEVNULL)
    threads = Threads(hook_build / "tests/threads", 2, secret, guard.env())
    assert threads.say("f") == "phase 1"
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    assert threads.say("w") == "waited"
    assert threads.finish()["late"] == 0  # alive, not killed by SIGPIPE, still judging
    state = guard.control()
    assert state.events > 0 and state.drops > 0


def test_a_program_that_closes_and_reuses_every_descriptor_never_gets_event_bytes(
    guard: Guard, hook_build: Path, secret: Path, tmp_path: Path
) -> None:
    guard.install(policy({"kind": "file", "path": str(secret)}))
    out_file = tmp_path / "out"
    assert guard.run([hook_build / "tests/closefd", secret, out_file]).stdout == "done\n"
    assert out_file.read_bytes() == b""
    assert len(guard.events()) == 4  # all four attempts reported through the real pipe


def test_a_call_from_another_library_constructor_is_judged(
    guard: Guard, hook_build: Path, secret: Path
) -> None:
    guard.install(policy({"kind": "file", "path": str(secret)}))
    out = guard.run([hook_build / "tests/ctor"], env={"PREGUARD_TEST_CTOR_PATH": str(secret)})
    assert out.stdout == "ctor denied\n"


def test_recursion_through_an_interposed_malloc_is_harmless(guard: Guard, secret: Path) -> None:
    # python's allocator and its many opens at start-up run under the library without trouble
    guard.install(policy({"kind": "file", "path": str(secret)}))
    out = guard.run(["python3", "-c", f"open({str(secret)!r})"])
    assert "PermissionError" in out.stderr


def asan_runtime() -> str:
    return subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_address_sanitizer_build_is_clean(hook_build: Path, tmp_path: Path, secret: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(HOOK), "asan"], check=True, capture_output=True)
    guard = Guard(tmp_path / "pg", BUILD / "libpreguard-asan.so")
    try:
        guard.install(
            policy(
                {"kind": "file", "path": str(secret)},
                {"kind": "file", "path": f"{tmp_path}/**/x*"},
                {"kind": "process", "name": "echo"},
                {"kind": "network", "cidr": "127.0.0.2/32"},
            )
        )
        env = {
            "LD_PRELOAD": f"{asan_runtime()} {guard.lib}",
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=99",
        }
        calls = hook_build / "tests/calls"
        runs: list[list[str | Path]] = [
            [calls, "open", secret, ""],
            [calls, "open_2", f"{tmp_path}/./a/../secret", ""],
            [calls, "fopen", secret, "r"],
            [calls, "execvp", "echo", "x"],
            [calls, "sendto", "4", "127.0.0.2", "9"],
            [calls, "rename", secret, tmp_path / "xx"],
            [hook_build / "tests/closefd", secret, tmp_path / "out"],
            [calls, "sys_open", secret],
            [calls, "reopen_w", secret],
            [calls, "vforkcd", tmp_path, "secret"],
            [calls, "execv", tmp_path / "script"],
            ["/usr/bin/env", "-i", str(calls), "open", secret, ""],
            [hook_build / "tests/sigopen", secret, tmp_path / "script", "2000"],
            [hook_build / "tests/mallocker", secret],
        ]
        (tmp_path / "script").write_text("#!/bin/sh\necho x\n")
        (tmp_path / "script").chmod(0o755)
        for argv in runs:
            out = subprocess.run(
                [str(a) for a in argv], env={**os.environ, **env}, capture_output=True, text=True, check=False
            )
            assert out.returncode != 99 and "AddressSanitizer" not in out.stderr, out.stderr
        proc = subprocess.run(
            [str(hook_build / "tests/threads"), "8", str(secret)],
            input="f\nq\n",
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 0 and "AddressSanitizer" not in proc.stderr, proc.stderr
        assert len(guard.events()) >= 5
    finally:
        guard.close()


def test_a_signal_handler_interrupting_a_hook_is_still_judged(
    guard: Guard, hook_build: Path, secret: Path
) -> None:
    allowed = secret.parent / "allowed"
    allowed.write_text("ok")
    guard.install(
        policy(
            {"kind": "file", "path": str(secret)},
            *({"kind": "file", "path": f"/x/{i}/**"} for i in range(200)),
        )
    )
    out = guard.run([hook_build / "tests/sigopen", secret, allowed, "20000"]).stdout.split()
    runs, leaks = int(out[1]), int(out[3])
    assert runs >= 1000 and leaks == 0


def test_a_program_whose_malloc_calls_hooked_functions_runs_and_is_judged(
    guard: Guard, hook_build: Path, secret: Path
) -> None:
    guard.install(policy({"kind": "file", "path": str(secret)}))
    out = guard.run([hook_build / "tests/mallocker", secret])
    assert (out.returncode, out.stdout) == (0, "denied malloc-opened\n")
    allowed = secret.parent / "allowed"
    allowed.write_text("x")
    assert guard.run([hook_build / "tests/mallocker", allowed]).stdout == "ok malloc-opened\n"

"""Every interposed call, blocked and allowed, with its event; allowed calls behave as without the library."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from preguard.proto import Kind, Outcome
from tests.hook.conftest import Guard, policy

OPEN_READS = ["open", "open_2", "open64", "open64_2", "fopen", "fopen64", "freopen", "freopen64"]
OPENAT_READS = ["openat", "openat_2", "openat64", "openat64_2"]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    (d / "secret").write_text("s3cret")
    (d / "public").write_text("hello")
    return d


@pytest.mark.parametrize("call", OPEN_READS)
def test_open_family_blocks_a_read_rule_and_allows_others(
    guard: Guard, calls: Path, files: Path, call: str
) -> None:
    compiled = guard.install(policy({"kind": "file", "path": str(files / "secret"), "access": "read"}))
    mode = "r" if call.startswith(("fopen", "freopen")) else ""
    blocked = guard.run([calls, call, files / "secret", mode])
    assert blocked.stdout.strip() == "err 13"
    allowed = guard.run([calls, call, files / "public", mode])
    assert allowed.stdout == guard.run([calls, call, files / "public", mode], hooked=False).stdout == "ok\n"
    [event] = guard.events()
    assert (event.kind, event.action, event.access, event.target) == (
        Kind.FILE,
        Outcome.BLOCKED,
        "read",
        str(files / "secret"),
    )
    assert event.exe == str(calls) and event.revision == 1
    assert compiled.origin(event.rule_id) is not None and compiled.origins[event.rule_id].rule == 0


@pytest.mark.parametrize("call", OPENAT_READS)
def test_openat_family_judges_the_path_below_the_directory_descriptor(
    guard: Guard, calls: Path, files: Path, call: str
) -> None:
    guard.install(policy({"kind": "file", "path": str(files / "secret"), "access": "read"}))
    assert guard.run([calls, call, files, "secret", ""]).stdout == "err 13\n"
    assert guard.run([calls, call, files, "public", ""]).stdout == "ok\n"
    assert [e.target for e in guard.events()] == [str(files / "secret")]


@pytest.mark.parametrize("call", ["open", "open64", "creat", "creat64", "fopen", "fopen64"])
def test_blocked_write_leaves_no_trace(guard: Guard, calls: Path, files: Path, call: str) -> None:
    guard.install(policy({"kind": "file", "path": f"{files}/**", "access": "write"}))
    target = files / "new"
    mode = {"open": "wc", "open64": "wct", "fopen": "w", "fopen64": "a"}.get(call, "")
    assert guard.run([calls, call, target, mode]).stdout == "err 13\n"
    assert not target.exists()
    assert guard.run([calls, call, files / "public", mode or "wt"]).stdout == "err 13\n"
    assert (files / "public").read_text() == "hello"  # not truncated
    assert guard.run([calls, "open", files / "public", ""]).stdout == "ok\n"  # reading stays allowed
    assert {e.access for e in guard.events()} == {"write"}


PATH_OPS = {
    # call: (args relative to the data dir, which path the write rule protects, what must still hold)
    "truncate": (["public"], "public"),
    "truncate64": (["public"], "public"),
    "rename": (["public", "moved"], "public"),
    "renameat": (["public", "moved"], "public"),
    "renameat2": (["public", "moved"], "public"),
    "link": (["public", "linked"], "public"),
    "linkat": (["public", "linked"], "public"),
    "unlink": (["public"], "public"),
    "unlinkat": (["public"], "public"),
    "chmod": (["public"], "public"),
    "fchmodat": (["public"], "public"),
    "mkdir": (["newdir"], "newdir"),
    "mkdirat": (["newdir"], "newdir"),
    "symlink": (["/etc/hostname", "newlink"], "newlink"),
    "symlinkat": (["/etc/hostname", "newlink"], "newlink"),
    "rmdir": (["emptydir"], "emptydir"),
    "remove": (["public"], "public"),
    "fchmod": (["public"], "public"),
    "mknod": (["fifo"], "fifo"),
    "mknodat": (["fifo"], "fifo"),
}


@pytest.mark.parametrize("call", ["mkstemp", "mkostemp", "mkstemps", "mkdtemp"])
def test_temporary_files_and_directories_are_judged_by_their_template(
    guard: Guard, calls: Path, files: Path, call: str
) -> None:
    guard.install(policy({"kind": "file", "path": f"{files}/**", "access": "write"}))
    assert guard.run([calls, call, files]).stdout == "err 13\n"
    assert sorted(p.name for p in files.iterdir()) == ["public", "secret"]
    assert guard.events()[0].target == f"{files}/tXXXXXX" + (".s" if call == "mkstemps" else "")
    guard.install(policy({"kind": "file", "path": "/elsewhere/**", "access": "write"}))
    assert guard.run([calls, call, files]).stdout == "ok\n"


NATURAL_FAILURES = [
    ["open", "/nonexistent/x", ""],
    ["open_2", "/etc", "w"],
    ["openat", "/nonexistent", "x", ""],
    ["fopen", "/nonexistent/x", "r"],
    ["unlink", "/nonexistent/x"],
    ["rename", "/nonexistent/x", "/tmp/y"],
    ["execve", "/nonexistent/x"],
    ["execvp", "no-such-program-anywhere"],
    ["posix_spawnp", "no-such-program-anywhere"],
    ["connect", "4", "127.0.0.1", "1"],
]


@pytest.mark.parametrize("argv", NATURAL_FAILURES, ids=lambda a: a[0])
def test_calls_the_rules_allow_fail_exactly_as_without_the_library(
    guard: Guard, calls: Path, files: Path, argv: list[str]
) -> None:
    # rules of every kind exist, none matches: errno and output are the kernel's own
    guard.install(
        policy(
            {"kind": "file", "path": f"{files}/secret"},
            {"kind": "process", "name": "nothing-like-this"},
            {"kind": "network", "cidr": "10.9.9.9/32"},
        )
    )
    hooked, plain = guard.run([calls, *argv]), guard.run([calls, *argv], hooked=False)
    assert (hooked.stdout, hooked.returncode) == (plain.stdout, plain.returncode)
    assert guard.events() == []


def test_a_vfork_child_blocked_from_exec_leaves_the_parent_intact(guard: Guard, calls: Path) -> None:
    # the child opens the pipe in its own descriptor table, in memory it shares with the parent:
    # the parent's next event must still reach the pipe, not the child's descriptor number
    guard.install(
        policy(
            {"kind": "process", "path": "/usr/bin/true"},
            {"kind": "file", "path": "/usr/bin/true", "access": "read"},
        )
    )
    assert guard.run([calls, "vfork", "/usr/bin/true"]).stdout == "child 13\nerr 13\n"
    assert [(e.kind, e.target) for e in guard.events()] == [
        (Kind.PROCESS, "/usr/bin/true"),
        (Kind.FILE, "/usr/bin/true"),
    ]
    assert guard.control().drops == 0


@pytest.mark.parametrize("call", sorted(PATH_OPS))
def test_path_operations_are_writes(guard: Guard, calls: Path, files: Path, call: str) -> None:
    args, protected = PATH_OPS[call]
    (files / "emptydir").mkdir()
    (files / "public").chmod(0o644)
    before = {p.name: p.lstat().st_mode for p in files.iterdir()}
    guard.install(policy({"kind": "file", "path": str(files / protected), "access": "write"}))
    argv = [a if a.startswith("/") else str(files / a) for a in args]
    assert guard.run([calls, call, *argv]).stdout == "err 13\n"
    assert {p.name: p.lstat().st_mode for p in files.iterdir()} == before
    [event] = guard.events()
    assert (event.kind, event.access, event.target) == (Kind.FILE, "write", str(files / protected))
    guard.install(policy({"kind": "file", "path": str(files / "other"), "access": "write"}))
    assert guard.run([calls, call, *argv]).stdout == "ok\n"


EXEC_CALLS = ["execve", "execv", "execvp", "execvpe", "execl", "execlp", "execle", "fexecve", "execveat"]
SPAWN_CALLS = ["posix_spawn", "posix_spawnp"]


@pytest.mark.parametrize("call", EXEC_CALLS + SPAWN_CALLS)
def test_exec_family_blocks_by_path_and_by_name(guard: Guard, calls: Path, call: str) -> None:
    program = "echo" if call in ("execvp", "execvpe", "execlp", "posix_spawnp") else "/bin/echo"
    guard.install(policy({"kind": "process", "name": "echo"}))
    blocked = guard.run([calls, call, program, "hi"])
    assert blocked.stdout.strip() == "err 13"
    [event] = guard.events()
    assert (event.kind, event.action, event.access) == (Kind.PROCESS, Outcome.BLOCKED, "exec")
    assert event.target.endswith("/echo")
    guard.install(policy({"kind": "process", "path": "/usr/bin/ech[o]"}))  # matches nothing
    assert guard.run([calls, call, program, "hi"]).stdout == "hi\n"
    assert guard.run([calls, call, program, "hi"], hooked=False).stdout == "hi\n"


@pytest.mark.parametrize(("call", "program"), [("spawn", "/usr/bin/echo"), ("spawnp", "echo")])
def test_posix_spawn_bound_to_its_old_symbol_version_is_judged(
    guard: Guard, hook_build: Path, call: str, program: str
) -> None:
    guard.install(policy({"kind": "process", "path": "/usr/bin/echo"}))
    assert guard.run([hook_build / "tests/spawn_old", call, program, "hi"]).stdout == "err 13\n"
    assert guard.run([hook_build / "tests/spawn_old", call, "/usr/bin/true"]).returncode == 0
    assert [e.target for e in guard.events()] == ["/usr/bin/echo"]


@pytest.mark.parametrize("call", ["system", "popen"])
def test_system_and_popen_judge_the_shell_and_the_shell_judges_the_command(
    guard: Guard, calls: Path, call: str
) -> None:
    guard.install(policy({"kind": "process", "name": "id"}))
    out = guard.run([calls, call, "echo shell-ran; id; echo id=$?"])
    assert "shell-ran" in out.stdout and "id=126" in out.stdout + out.stderr
    guard.install(policy({"kind": "process", "name": "dash"}, {"kind": "process", "name": "sh"}))
    assert guard.run([calls, call, "echo shell-ran"]).stdout == "err 13\n"
    assert {e.access for e in guard.events()} == {"exec"}


@pytest.fixture
def listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


@pytest.mark.parametrize("call", ["connect", "tfo"])
def test_tcp_connect_and_fast_open_are_judged_by_cidr_and_port(guard: Guard, calls: Path, call: str) -> None:
    guard.install(policy({"kind": "network", "cidr": "127.0.0.2/32", "ports": "1-1024", "protocol": "tcp"}))
    assert guard.run([calls, call, "4", "127.0.0.2", "80"]).stdout == "err 13\n"
    assert guard.run([calls, call, "4", "127.0.0.2", "8080"]).stdout == "ok\n"  # port outside the range
    assert guard.run([calls, call, "4", "127.0.0.3", "80"]).stdout == "ok\n"
    assert guard.run([calls, call, "6", "::ffff:127.0.0.2", "80"]).stdout == "err 13\n"  # IPv4-mapped
    targets = [(e.target, e.access) for e in guard.events()]
    assert targets == [("127.0.0.2:80", "connect")] * 2


@pytest.mark.parametrize("call", ["sendto", "sendmsg", "sendmmsg"])
def test_udp_without_connect_is_judged_per_datagram(guard: Guard, calls: Path, call: str) -> None:
    guard.install(policy({"kind": "network", "cidr": "127.0.0.2/32", "ports": "53", "protocol": "udp"}))
    assert guard.run([calls, call, "4", "127.0.0.2", "53"]).stdout == "err 13\n"
    assert guard.run([calls, call, "4", "127.0.0.2", "54"]).stdout == "ok\n"
    assert guard.run([calls, "connect", "4", "127.0.0.2", "53"]).stdout == "ok\n"  # tcp: not this rule
    [event] = guard.events()
    assert (event.kind, event.access, event.target) == (Kind.NETWORK, "send", "127.0.0.2:53")


def test_ipv6_networks_match_by_prefix(guard: Guard, calls: Path) -> None:
    guard.install(policy({"kind": "network", "cidr": "fd00::/8"}))
    assert guard.run([calls, "sendto", "6", "fd12::1", "9"]).stdout == "err 13\n"
    assert guard.run([calls, "sendto", "6", "::1", "9"]).stdout == "ok\n"
    assert [e.target for e in guard.events()] == ["[fd12::1]:9"]


def test_unix_socket_paths_are_judged_after_resolving_links(
    guard: Guard, calls: Path, tmp_path: Path
) -> None:
    sock = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock))
    server.listen(1)
    (tmp_path / "alias.sock").symlink_to(sock)
    guard.install(policy({"kind": "network", "unix": str(sock)}))
    assert guard.run([calls, "connect", "u", sock]).stdout == "err 13\n"
    assert guard.run([calls, "connect", "u", tmp_path / "alias.sock"]).stdout == "err 13\n"
    server.close()
    assert [e.target for e in guard.events()] == [str(sock)] * 2


def test_audit_allows_and_reports(guard: Guard, calls: Path, files: Path) -> None:
    guard.install(policy({"kind": "file", "path": str(files / "public"), "action": "audit"}))
    assert guard.run([calls, "open", files / "public", ""]).stdout == "ok\n"
    [event] = guard.events()
    assert event.action == Outcome.AUDITED


def test_calls_through_libc_syscall_are_judged(guard: Guard, calls: Path, files: Path) -> None:
    guard.install(
        policy(
            {"kind": "file", "path": str(files / "secret")},
            {"kind": "file", "path": str(files / "public"), "access": "write"},
            {"kind": "process", "name": "echo"},
            {"kind": "network", "cidr": "127.0.0.2/32"},
        )
    )
    for argv in (
        ["sys_open", files / "secret"],
        ["sys_openat", files / "secret"],
        ["sys_openat2", files / "secret"],
        ["sys_unlink", files / "public"],
        ["sys_execve", "/usr/bin/echo", "hi"],
        ["sys_connect", "127.0.0.2", "80"],
    ):
        assert guard.run([calls, *argv]).stdout == "err 13\n", argv
    assert (files / "public").exists()
    assert guard.run([calls, "sys_open", files / "public"]).stdout == "ok\n"
    assert guard.run([calls, "sys_execve", "/usr/bin/printf", "x"]).stdout == "x"
    assert len(guard.events()) == 6


def test_freopen_of_the_same_file_in_a_writing_mode_is_judged(guard: Guard, calls: Path, files: Path) -> None:
    guard.install(policy({"kind": "file", "path": str(files / "public"), "access": "write"}))
    assert guard.run([calls, "reopen_w", files / "public"]).stdout == "err 13\n"
    assert guard.run([calls, "reopen_w", files / "secret"]).stdout == "ok\n"
    assert [(e.access, e.target) for e in guard.events()] == [("write", str(files / "public"))]

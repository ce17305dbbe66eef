"""A shell tries every PATH entry: only the program that would run is judged and reported."""

from pathlib import Path

from preguard.proto import Kind, Outcome
from tests.hook.conftest import Guard, policy


def test_a_shell_path_search_reports_only_the_program_it_would_run(guard: Guard, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    guard.install(policy({"kind": "process", "name": "ls"}))
    path = f"{tmp_path}/missing:{tmp_path}/empty:{tmp_path}/link:/usr/local/sbin:/usr/sbin:/sbin:/usr/bin"
    result = guard.run(["/bin/sh", "-c", "ls /"], env={"PATH": path})
    assert result.returncode != 0
    events = guard.events()
    assert [(e.kind, e.action, e.target) for e in events] == [(Kind.PROCESS, Outcome.BLOCKED, "/usr/bin/ls")]

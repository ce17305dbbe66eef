"""The probe's I/O-free parts (and the host-root guard), with plain calls."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from preguard.probe.coverage import (
    NO_INTERPRETER,
    NO_LIBC,
    NOT_LOADED,
    STARTED_BEFORE,
    STATIC,
    classify,
    elf_interpreter,
    maps_has_library,
    start_time,
)
from preguard.probe.libc import glibc_version, loader_family
from preguard.probe.pipes import TokenBucket
from preguard.probe.rootfs import HostRootError, RootFS, add_line, remove_line
from preguard.probe.selection import ContainerInfo, from_inspect, select, selects
from preguard.probe.settings import ProbeSettings
from preguard.proto import Policy, Selector

WEB = ContainerInfo(
    id="a" * 64, name="web-1", image="docker.io/library/nginx:1.25", labels={"tier": "web", "env": "prod"}
)


@pytest.mark.parametrize(
    ("selector", "host", "expected"),
    [
        (Selector(), "any", True),
        (Selector(hosts=["node-*"]), "node-3", True),
        (Selector(hosts=["node-*"]), "db-3", False),
        (Selector(containers=["web-*"]), "h", True),
        (Selector(containers=["db-*", "web-?"]), "h", True),
        (Selector(containers=["WEB-*"]), "h", False),  # case-sensitive, like Docker names
        (Selector(images=["nginx*"]), "h", True),  # the short form of docker.io/library/nginx
        (Selector(images=["docker.io/library/nginx:*"]), "h", True),
        (Selector(images=["redis*"]), "h", False),
        (Selector(labels={"tier": "web"}), "h", True),
        (Selector(labels={"tier": "web", "env": "dev"}), "h", False),
        (Selector(labels={"team": "web"}), "h", False),
        (Selector(containers=["web-*"], labels={"tier": "db"}), "h", False),
    ],
)
def test_selector_fields_must_all_match(selector: Selector, host: str, expected: bool) -> None:
    assert selects(selector, host, WEB) is expected


def test_select_returns_matching_policies_in_name_order() -> None:
    policies = [
        Policy(name="zz", selector=Selector(containers=["web-*"])),
        Policy(name="aa"),
        Policy(name="db", selector=Selector(containers=["db-*"])),
    ]
    assert [p.name for p in select(policies, "h", WEB)] == ["aa", "zz"]


def test_inspect_document_becomes_container_info() -> None:
    info = from_inspect(
        {
            "Id": "b" * 64,
            "Name": "/web-2",
            "Config": {
                "Image": "nginx:1",
                "Labels": {"a": "b"},
                "Env": ["LD_PRELOAD=/.preguard/libpreguard.so"],
            },
            "State": {"Pid": 42, "Running": True},
            "HostConfig": {"ReadonlyRootfs": True},
            "Mounts": [{"Destination": "/.preguard"}],
        }
    )
    assert (info.name, info.short_id, info.pid, info.read_only) == ("web-2", "b" * 12, 42, True)
    assert info.preload_env
    assert info.preguard_volume


def test_scope_label_confines_the_probe() -> None:
    assert ProbeSettings(host="h").in_scope({})
    assert ProbeSettings(host="h", scope="k=v").in_scope({"k": "v"})
    assert not ProbeSettings(host="h", scope="k=v").in_scope({"k": "w"})
    assert ProbeSettings(host="h", scope="k").in_scope({"k": ""})


def test_settings_from_env_read_status_interval() -> None:
    s = ProbeSettings.from_env({"PREGUARD_STATUS_INTERVAL": "0.25", "PREGUARD_HOST": "n1"})
    assert (s.status_interval, s.host) == (0.25, "n1")


# -- /etc/ld.so.preload ------------------------------------------------------------------------------
LINE = "/.preguard/libpreguard.so"


def test_preload_line_goes_first_and_others_are_kept() -> None:
    assert add_line("", LINE) == f"{LINE}\n"
    assert add_line("/a.so\n/b.so\n", LINE) == f"{LINE}\n/a.so\n/b.so\n"
    assert add_line(f"/a.so\n{LINE}\n", LINE) == f"{LINE}\n/a.so\n"


def test_removing_the_line_restores_what_was_there() -> None:
    original = "/a.so\n# comment\n/b.so\n"
    assert remove_line(add_line(original, LINE), LINE) == original
    assert remove_line(add_line("", LINE), LINE) == ""


# -- the host-root guard --------------------------------------------------------------------------
@pytest.mark.parametrize("pid", [0, 1, os.getpid()])
def test_host_processes_are_refused_as_container_roots(pid: int) -> None:
    with pytest.raises(HostRootError):
        RootFS(pid)


def test_a_process_sharing_our_root_is_refused() -> None:
    # our parent (pytest's shell or runner) shares the host's root: exactly the stale-pid case
    with pytest.raises(HostRootError):
        RootFS(os.getppid())


# -- libc detection ---------------------------------------------------------------------------------
def test_loader_names_tell_the_libc_family() -> None:
    assert loader_family(["ld-musl-x86_64.so.1", "libz.so"]) == "musl"
    assert loader_family(["ld-linux-x86-64.so.2"]) == "glibc"
    assert loader_family(["ld-linux-aarch64.so.1"]) == "glibc"
    assert loader_family(["libc.so"]) == "none"
    assert (
        loader_family(["ld-musl-x86_64.so.1", "ld-linux-x86-64.so.2"]) == "glibc"
    )  # glibc image + musl-tools


def test_glibc_version_from_the_release_banner_or_symbol_versions() -> None:
    assert glibc_version(b"\0GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36.\n") == (2, 36)
    assert glibc_version(b"GLIBC_2.2.5\0GLIBC_2.17\0GLIBC_2.3\0") == (2, 17)
    assert glibc_version(b"nothing") is None
    host = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if host.exists():
        assert glibc_version(host.read_bytes()) is not None


# -- coverage ----------------------------------------------------------------------------------------
def _head(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4096)


def test_elf_interpreter_tells_dynamic_from_static() -> None:
    assert elf_interpreter(_head("/bin/ls")) is True
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static not installed")
    assert elf_interpreter(_head(busybox)) is False
    assert elf_interpreter(b"#!/bin/sh\n" + b"\0" * 100) is None


MAPS_COVERED = (
    "7f00-7f01 r-xp 00000000 08:01 12 /.preguard/libpreguard.so\n"
    "7f02-7f03 r-xp 00000000 08:01 13 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
)
MAPS_PLAIN = "7f02-7f03 r-xp 00000000 08:01 13 /usr/lib/x86_64-linux-gnu/libc.so.6\n"


def test_classify_names_why_a_process_runs_without_the_library() -> None:
    dynamic, static = _head("/bin/ls"), _head(shutil.which("busybox") or "/bin/ls")
    assert maps_has_library(MAPS_COVERED)
    assert classify(MAPS_COVERED, dynamic, 10.0, 20.0) is None
    assert classify(MAPS_PLAIN, dynamic, 10.0, 20.0) == STARTED_BEFORE
    assert classify(MAPS_PLAIN, dynamic, 30.0, 20.0) == NOT_LOADED
    assert classify("", dynamic, 30.0, 20.0) == NO_LIBC
    assert classify("", b"not elf", 30.0, 20.0) == NO_INTERPRETER
    if shutil.which("busybox"):
        assert classify("", static, 30.0, 20.0) == STATIC


def test_start_time_reads_field_22_past_a_comm_with_spaces() -> None:
    stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 500 1000 10"
    assert start_time(stat, ticks=100) == 5.0


def test_token_bucket_admits_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert bucket.take(0.0, 8) == 5
    assert bucket.take(0.0, 1) == 0
    assert bucket.take(1.0, 100) == 5  # refilled to the burst, not beyond


def test_needed_libraries_reads_dt_needed() -> None:
    from preguard.probe.libc import needed_libraries

    assert "libc.so.6" in needed_libraries(Path("/bin/ls").read_bytes())
    assert needed_libraries(b"not an elf") == []


def test_the_library_build_follows_the_glibc_version() -> None:
    from preguard.proto.abi import LIBRARY_BUILDS, library_build

    assert library_build("glibc", (2, 36)) == library_build("glibc", (2, 34)) == "glibc-2.34"
    assert library_build("glibc", (2, 33)) == library_build("glibc", (2, 17)) == "glibc"
    assert library_build("glibc", None) == "glibc"  # unknown: the build that loads everywhere
    assert library_build("musl", None) == "musl"
    assert {library_build("glibc", (2, 36)), library_build("glibc", (2, 31)), "musl"} <= set(LIBRARY_BUILDS)


def test_an_image_without_libdl_is_refused_the_build_that_links_it() -> None:
    """A preloaded library whose dependency is missing stops every program: the probe checks the
    chosen build's DT_NEEDED list against the image (glibc before 2.34 gets the libdl build)."""
    from preguard.probe import inject
    from preguard.probe.libc import missing_libraries, needed_libraries

    class Empty:  # an image that holds only libc.so.6
        def exists(self, path: str) -> bool:
            return path.endswith("/libc.so.6")

    libdl_build = needed_libraries(inject.library_bytes("glibc"))
    assert missing_libraries(Empty(), "glibc", libdl_build) == ["libdl.so.2"]  # type: ignore[arg-type]
    assert missing_libraries(Empty(), "glibc", needed_libraries(inject.library_bytes("glibc-2.34"))) == []  # type: ignore[arg-type]


def test_one_container_cannot_fill_the_whole_outage_buffer() -> None:
    from datetime import UTC, datetime

    from nats.aio.client import Client

    from preguard.probe.publisher import Publisher
    from preguard.proto import Event, Kind, Outcome, Severity

    dropped: dict[str, int] = {}
    publisher = Publisher(
        Client(), capacity=8, batch=2, on_drop=lambda k, n: dropped.__setitem__(k, dropped.get(k, 0) + n)
    )
    event = Event(
        host="h", container_id="c", container_name="n", image="i", time=datetime.now(UTC), time_ns=0,
        pid=1, uid=0, exe="/x", kind=Kind.FILE, target="/t", access="read", action=Outcome.BLOCKED,
        policy="p", rule=0, severity=Severity.LOW,
    )  # fmt: skip
    publisher.submit("flood", "s.flood", [event] * 5)
    publisher.submit("quiet", "s.quiet", [event])
    assert (publisher.held, dropped) == (3, {"flood": 3})


def test_a_truncated_library_build_is_not_complete() -> None:
    from preguard.probe.inject import complete_elf

    whole = Path("/bin/ls").read_bytes()
    assert complete_elf(whole)
    assert not complete_elf(whole[: len(whole) // 2])
    assert not complete_elf(b"")

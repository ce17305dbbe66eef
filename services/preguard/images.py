"""Tiny container images made from files on this machine with `docker import` (nothing is pulled).

glibc: the host's dash, coreutils and friends with the libraries `ldd` lists and the loader, plus a
static busybox at /bin/busybox-static (a program the library can never cover).
musl: a small program built with Debian's musl-gcc and musl's loader, busybox (static) as the shell.
Both have /tmp and a writable root. Extra files (test programs) can be added per image.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

GLIBC_PROGRAMS = [
    "sh", "bash", "cat", "ls", "id", "sleep", "env", "true", "false", "touch", "rm", "mkdir",
    "ln", "echo", "head", "tail", "wc", "printf", "stat", "readlink", "mv", "cp", "chmod",
    "kill", "timeout", "dd", "grep", "sed",
]  # fmt: skip
MUSL_LOADER = "/lib/ld-musl-x86_64.so.1"
GLIBC_STUBS = ("libdl.so.2", "libpthread.so.0", "librt.so.1")
_MULTIARCH = "/lib/x86_64-linux-gnu"
_LDD_PATH = re.compile(r"(/\S+)")

MUSL_HELLO = r"""
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1) {  /* hello PATH: open it, say whether that worked */
        int fd = open(argv[1], O_RDONLY);
        printf("open %s: %s\n", argv[1], fd >= 0 ? "ok" : "denied");
        return fd >= 0 ? 0 : 1;
    }
    printf("hello from musl\n");
    return 0;
}
"""


def _libraries(binary: str) -> set[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    libs = set()
    for line in out.splitlines():
        m = _LDD_PATH.search(line.split("=>")[-1])
        if m and os.path.exists(m.group(1)):
            libs.add(m.group(1))
    return libs


def _mkroot(root: Path) -> None:
    # merged /usr, as Debian: paths that ldd prints (/lib/..., /lib64/...) land under usr/
    for d in ("usr/bin", "usr/lib", "usr/lib64", "usr/sbin", "tmp", "etc", "proc", "dev", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ):
        (root / link).symlink_to(target)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")


def _copy(src: str, root: Path, dest: str | None = None) -> None:
    target = root / (dest or src).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target, follow_symlinks=True)


def glibc_root(root: Path, extra: Mapping[str, str] = {}) -> None:
    _mkroot(root)
    libs: set[str] = set()
    for name in GLIBC_PROGRAMS:
        path = shutil.which(name)
        if path is None:
            continue
        _copy(path, root, f"/usr/bin/{name}")
        libs |= _libraries(path)
    # Every glibc distribution ships these compatibility stubs (libc6); programs that link them,
    # the hook library among them, must find them here as they would in a real image.
    libs |= {lib for lib in (f"{_MULTIARCH}/{name}" for name in GLIBC_STUBS) if os.path.exists(lib)}
    for lib in libs:
        _copy(lib, root)
    busybox = shutil.which("busybox")
    if busybox:
        _copy(busybox, root, "/usr/bin/busybox-static")
    for dest, src in extra.items():
        _copy(src, root, dest)
        libs_extra = _libraries(src)
        for lib in libs_extra - libs:
            _copy(lib, root)


def musl_root(root: Path, extra: Mapping[str, str] = {}) -> None:
    _mkroot(root)
    musl_gcc = shutil.which("musl-gcc")
    if musl_gcc is None:
        raise RuntimeError("musl-gcc not found: install Debian's musl-tools")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "hello.c")
        src.write_text(MUSL_HELLO)
        out = root / "usr/bin/hello"
        subprocess.run([musl_gcc, "-O2", "-o", str(out), str(src)], check=True)
    _copy(os.path.realpath(MUSL_LOADER), root, MUSL_LOADER)
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox not found: install Debian's busybox-static")
    _copy(busybox, root, "/usr/bin/busybox")
    for applet in ("sh", "cat", "ls", "sleep", "echo", "id", "touch", "rm", "env", "true"):
        (root / "usr/bin" / applet).symlink_to("busybox")
    for dest, source in extra.items():
        _copy(source, root, dest)


def _tar(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.mtime = 0  # same files -> same bytes -> same tag
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    return buf.getvalue()


def build_image(kind: str, name: str, extra: Mapping[str, str] = {}) -> str:
    """`docker import` a root filesystem of the given kind (glibc | musl); returns the tag."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "root")
        root.mkdir()
        (glibc_root if kind == "glibc" else musl_root)(root, extra)
        data = _tar(root)
    tag = f"{name}:{hashlib.sha256(data).hexdigest()[:12]}"
    subprocess.run(
        ["docker", "import", "--change", 'CMD ["/bin/sh"]', "-", tag],
        input=data,
        check=True,
        capture_output=True,
    )
    return tag


def remove_images(tags: Iterable[str]) -> None:
    for tag in tags:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)

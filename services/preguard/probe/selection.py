"""Which policies select a container: the contract's selector globs, without I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

import msgspec

from preguard.proto import Policy, Selector


class ContainerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the probe knows of one running container, from the Docker API."""

    id: str  # the full 64-character id
    name: str  # without Docker's leading "/"
    image: str  # the image reference the container was created from (Config.Image)
    labels: dict[str, str] = {}
    pid: int = 0  # init process, in the host PID namespace
    env: list[str] = []
    mounts: list[str] = []  # destinations inside the container
    read_only: bool = False  # HostConfig.ReadonlyRootfs

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def preload_env(self) -> bool:
        """Started for the create-time path: LD_PRELOAD names the library in /.preguard."""
        return any(e.startswith("LD_PRELOAD=") and "/.preguard/" in e for e in self.env)

    @property
    def preguard_volume(self) -> bool:
        return "/.preguard" in self.mounts


def from_inspect(data: Mapping[str, object]) -> ContainerInfo:
    """A ContainerInfo from `GET /containers/<id>/json`; raises KeyError/TypeError when malformed."""
    config = data.get("Config") or {}
    state = data.get("State") or {}
    host_config = data.get("HostConfig") or {}
    mounts = data.get("Mounts") or []
    assert isinstance(config, dict)
    assert isinstance(state, dict)
    assert isinstance(host_config, dict)
    assert isinstance(mounts, list)
    return ContainerInfo(
        id=str(data["Id"]),
        name=str(data.get("Name") or "").lstrip("/"),
        image=str(config.get("Image") or data.get("Image") or ""),
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        pid=int(state.get("Pid") or 0),
        env=[str(e) for e in config.get("Env") or []],
        mounts=[str(m.get("Destination", "")) for m in mounts if isinstance(m, dict)],
        read_only=bool(host_config.get("ReadonlyRootfs")),
    )


def glob_any(patterns: Iterable[str], value: str) -> bool:
    """An empty pattern list matches everything; otherwise any glob (fnmatch, case-sensitive)."""
    patterns = list(patterns)
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def image_names(image: str) -> list[str]:
    """An image reference and its short forms: `docker.io/library/nginx:1` also reads `nginx:1`."""
    names = [image]
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        if image.startswith(prefix):
            names.append(image[len(prefix) :])
    return names


def selects(selector: Selector, host: str, container: ContainerInfo) -> bool:
    """All given fields must match; an empty selector selects every container on every host."""
    if not glob_any(selector.hosts, host):
        return False
    if not glob_any(selector.containers, container.name):
        return False
    if selector.images and not any(glob_any(selector.images, n) for n in image_names(container.image)):
        return False
    return all(container.labels.get(k) == v for k, v in selector.labels.items())


def select(policies: Iterable[Policy], host: str, container: ContainerInfo) -> list[Policy]:
    """The policies that select the container, in a stable order (by name) for caching."""
    chosen = [p for p in policies if selects(p.selector, host, container)]
    return sorted(chosen, key=lambda p: p.name)

"""Which policies reach which host, and which containers a policy selects: no I/O."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import datetime

from preguard.proto import ContainerStatus, Policy, PolicyBundle, ProbeStatus
from preguard.proto.api import PreviewMatch


def host_matches(policy: Policy, host: str) -> bool:
    """A selector without hosts matches every host; otherwise one of its globs must."""
    globs = policy.selector.hosts
    return not globs or any(fnmatch.fnmatchcase(host, g) for g in globs)


def selects(policy: Policy, host: str, container: ContainerStatus) -> bool:
    """The contract's selector: every given field must match (globs on names and images)."""
    sel = policy.selector
    if not host_matches(policy, host):
        return False
    name = container.name.lstrip("/")  # Docker's API spells names with a leading slash
    if sel.containers and not any(fnmatch.fnmatchcase(name, g) for g in sel.containers):
        return False
    if sel.images and not any(
        fnmatch.fnmatchcase(i, g) for i in image_names(container.image) for g in sel.images
    ):
        return False
    return all(container.labels.get(k) == v for k, v in sel.labels.items())


def image_names(image: str) -> list[str]:
    """An image reference and its short forms (as the probe reads them): `docker.io/library/nginx:1`
    also reads `nginx:1`."""
    names = [image]
    for prefix in ("docker.io/library/", "docker.io/", "library/"):
        if image.startswith(prefix):
            names.append(image[len(prefix) :])
    return names


def bundle(host: str, revision: int, policies: Mapping[str, Policy], now: datetime) -> PolicyBundle:
    """Every policy whose host globs match, by name, at one global revision."""
    chosen = [p for n in sorted(policies) if host_matches(p := policies[n], host)]
    return PolicyBundle(host=host, revision=revision, policies=chosen, time=now)


def preview(policy: Policy, statuses: Mapping[str, ProbeStatus]) -> tuple[list[str], list[PreviewMatch]]:
    """Known hosts the policy reaches, and the containers it selects there, from the last heartbeats."""
    hosts = sorted(h for h in statuses if host_matches(policy, h))
    matches = [
        PreviewMatch(host=h, container_id=c.id, container_name=c.name.lstrip("/"), image=c.image)
        for h in hosts
        for c in statuses[h].containers
        if selects(policy, h, c)
    ]
    return hosts, matches

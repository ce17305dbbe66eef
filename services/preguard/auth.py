"""Who may do what on the bus: roles, their NATS permissions, credentials, the server's authorization."""

from __future__ import annotations

import json
import os
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgspec

from preguard.proto import Subjects
from preguard.proto.subjects import token


class Role(StrEnum):
    PROBE = "probe"  # one per host: its own bundle in, its own events and status out
    POLICY = "policy"  # the policy service
    ALERT = "alert"  # the alert service
    CONSOLE = "console"  # the web console: a policy writer that also reads status and alerts
    OPERATOR = "operator"  # the CLI and other systems: policy writer, reads status and alerts
    DASHBOARD = "dashboard"  # SOC dashboards: alerts only, read-only
    ADMIN = "admin"  # `preguard up` itself and people debugging with the nats CLI: everything


class Credential(msgspec.Struct, frozen=True, kw_only=True):
    """One user's credential file (JSON, mode 0600); PREGUARD_CREDS names it."""

    user: str
    password: str
    role: Role
    host: str = ""  # the probe's host
    inbox_prefix: str = ""  # replies come to <inbox_prefix>.>; only this user may read them
    url: str = ""  # where the server listens (a convenience for the CLI)
    tls_ca: str = ""  # the CA that signed the server's certificate, when it uses TLS


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    publish: list[str]
    subscribe: list[str]
    allow_responses: bool = False  # may answer requests it received (publish to their reply subject)


_credential = msgspec.json.Decoder(Credential)


def user_name(role: Role, host: str = "") -> str:
    return f"probe-{token(host)}" if role is Role.PROBE else str(role)


def inbox_prefix(user: str) -> str:
    """Per user: with a shared `_INBOX.>` any client could read every other client's replies."""
    return f"_INBOX.{token(user)}"


def _stream(name: str) -> list[str]:
    """JetStream API subjects that act on one stream (or KV bucket stream) and nothing else."""
    api = "$JS.API"
    return [
        f"{api}.STREAM.INFO.{name}",
        f"{api}.STREAM.CREATE.{name}",
        f"{api}.STREAM.UPDATE.{name}",
        f"{api}.STREAM.MSG.GET.{name}",
        f"{api}.DIRECT.GET.{name}",
        f"{api}.DIRECT.GET.{name}.>",
        f"{api}.CONSUMER.CREATE.{name}",
        f"{api}.CONSUMER.CREATE.{name}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{name}.*",
        f"{api}.CONSUMER.INFO.{name}.*",
        f"{api}.CONSUMER.DELETE.{name}.*",
        f"{api}.CONSUMER.MSG.NEXT.{name}.*",
        f"$JS.ACK.{name}.>",
        f"$JS.FC.{name}.>",
    ]


def _kv(bucket: str) -> list[str]:
    return [*_stream(f"KV_{bucket}"), f"$KV.{bucket}.>"]


def permissions(role: Role, subjects: Subjects, host: str = "") -> Permissions:
    """Least privilege per role, as the server enforces it (see docs/security.md for the table)."""
    s, inbox = subjects, f"{inbox_prefix(user_name(role, host))}.>"
    p = s.prefix
    if role is Role.PROBE:
        if not host:
            raise ValueError("a probe's permissions need its host")
        own = s.policy(host)
        return Permissions(
            publish=[
                f"{p}.events.{token(host)}.*",
                s.status(host),
                f"$JS.API.DIRECT.GET.{s.stream_bundles()}.{own}",  # its own retained bundle only
            ],
            subscribe=[own, inbox],
        )
    if role is Role.POLICY:
        return Permissions(
            publish=[f"{p}.policy.*", *_kv(s.kv_policies()), *_stream(s.stream_bundles())],
            subscribe=[f"{p}.api.policy.*", s.status_all(), inbox],
            allow_responses=True,
        )
    if role is Role.ALERT:
        alerts = s.stream_alerts()
        return Permissions(
            publish=[
                f"{p}.alerts.>",
                *_stream(s.stream_events()),
                *_stream(f"{p.replace('.', '_')}_alertwork"),
                *_stream(alerts),
                *_kv(f"{alerts}_state"),
                *_kv(f"{alerts}_leases"),
            ],
            subscribe=[f"{p}.api.alerts.*", s.status_all(), inbox],
            allow_responses=True,
        )
    if role in (Role.CONSOLE, Role.OPERATOR):
        return Permissions(
            publish=[f"{p}.api.policy.*", s.api_alerts("query")],
            subscribe=[s.status_all(), s.alerts_all(), inbox],
        )
    if role is Role.DASHBOARD:
        return Permissions(publish=[s.api_alerts("query")], subscribe=[s.alerts_all(), inbox])
    return Permissions(publish=[">"], subscribe=[">"], allow_responses=True)


def new_credential(role: Role, host: str = "", url: str = "", tls_ca: str = "") -> Credential:
    user = user_name(role, host)
    return Credential(
        user=user,
        password=secrets.token_urlsafe(24),
        role=role,
        host=host,
        inbox_prefix=inbox_prefix(user),
        url=url,
        tls_ca=tls_ca,
    )


def read_credential(path: str | Path) -> Credential | None:
    """A preguard credential file; None for anything else (e.g. a NATS .creds file with a JWT)."""
    data = Path(path).read_bytes()
    if not data.lstrip().startswith(b"{"):
        return None
    return _credential.decode(data)


def write_private(path: Path, data: bytes) -> None:
    """Written with mode 0600 from the start (never world-readable, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def authorization(users: list[tuple[Credential, Permissions]]) -> dict[str, Any]:
    """The nats-server `authorization` block: these users only, so anonymous clients are refused."""
    return {
        "users": [
            {
                "user": cred.user,
                "password": cred.password,
                "permissions": {
                    "publish": {"allow": perms.publish},
                    "subscribe": {"allow": perms.subscribe},
                    **({"allow_responses": True} if perms.allow_responses else {}),
                },
            }
            for cred, perms in users
        ],
        "timeout": 5,
    }


class Generated(msgspec.Struct, frozen=True, kw_only=True):
    directory: Path
    config: Path  # nats-server config with the authorization block (and TLS when given)
    credentials: dict[str, Path]  # user -> its credential file

    def path(self, role: Role, host: str = "") -> Path:
        return self.credentials[user_name(role, host)]


def generate(
    directory: Path,
    subjects: Subjects,
    hosts: list[str],
    *,
    url: str = "",
    tls: dict[str, Any] | None = None,
    tls_ca: str = "",
) -> Generated:
    """Credentials for every role (one probe per host) under directory, and the server's config.

    An existing credential for the same user and role keeps its password, so clients configured
    with it keep working across restarts; the url is refreshed.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    wanted = [(role, "") for role in Role if role is not Role.PROBE] + [(Role.PROBE, h) for h in hosts]
    users: list[tuple[Credential, Permissions]] = []
    paths: dict[str, Path] = {}
    for role, host in wanted:
        path = directory / f"{user_name(role, host)}.json"
        cred = new_credential(role, host, url, tls_ca)
        try:
            old = read_credential(path) if path.exists() else None
        except msgspec.DecodeError:
            old = None
        if old is not None and old.user == cred.user and old.role is role:
            cred = msgspec.structs.replace(cred, password=old.password)
        write_private(path, msgspec.json.encode(cred) + b"\n")
        users.append((cred, permissions(role, subjects, host)))
        paths[cred.user] = path
    config: dict[str, Any] = {"authorization": authorization(users)}
    if tls:
        config["tls"] = tls
    conf = directory / "nats.conf"
    write_private(conf, json.dumps(config, indent=1).encode())  # JSON is valid nats-server config
    return Generated(directory=directory, config=conf, credentials=paths)


def main(argv: list[str] | None = None) -> int:
    """`python -m preguard.auth DIR --host H ...`: credentials and nats.conf for a deployment."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m preguard.auth", description=main.__doc__)
    p.add_argument("directory", type=Path)
    p.add_argument("--host", action="append", default=[], help="a probe's host (repeat for each)")
    p.add_argument("--prefix", default=os.environ.get("PREGUARD_PREFIX") or "preguard")
    p.add_argument("--url", default="", help="the server's URL, recorded in each credential")
    args = p.parse_args(argv)
    made = generate(args.directory, Subjects(prefix=args.prefix), args.host, url=args.url)
    print(f"server config: {made.config}")
    for user, path in sorted(made.credentials.items()):
        print(f"{user}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

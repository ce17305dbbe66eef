"""Policy pages: list, view, create and edit (YAML or JSON), validate, preview, history, delete."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import structlog
from aiohttp import web

from preguard.console.app import CONSOLE, render
from preguard.console.bus import RefusedError, Unavailable
from preguard.console.editor import Format, PlacedError, diff, parse, place, to_text
from preguard.proto import Policy
from preguard.proto.api import PolicyHistory, PolicyRevision

log = structlog.get_logger()

TEMPLATE = """name: my-policy
description: what this policy is for
severity: medium
selector:
  containers: ["*"]
rules:
  - {kind: process, path: /bin/sh, action: audit}
"""


CONFLICT = (
    "conflict: this policy was changed (or created) by someone else since this page was opened. "
    "Your text is kept here: open the policy again in another tab, merge, and save."
)


def routes(app: web.Application) -> None:
    app.router.add_get("/policies", list_page)
    app.router.add_get("/policies/new", new_page)
    app.router.add_post("/policies/edit", submit)
    app.router.add_get("/policies/{name}", view_page)
    app.router.add_get("/policies/{name}/edit", edit_page)
    app.router.add_get("/policies/{name}/history", history_page)
    app.router.add_get("/policies/{name}/delete", delete_page)
    app.router.add_post("/policies/{name}/delete", delete)


def _latest(history: PolicyHistory | BaseException) -> PolicyRevision | None:
    if isinstance(history, PolicyHistory) and history.revisions:
        return history.revisions[-1]
    return None


async def list_page(request: web.Request) -> web.StreamResponse:
    bus = request.app[CONSOLE].bus
    try:
        policies = await bus.list_policies()
    except (Unavailable, RefusedError) as exc:
        return render(request, "policies.html", title="Policies", rows=[], note=str(exc))
    # The list reply carries no revisions: ask each policy's history, all at once.
    histories = await asyncio.gather(*(bus.history(p.name) for p in policies), return_exceptions=True)
    rows = [(p, _latest(h)) for p, h in zip(policies, histories, strict=True)]
    return render(request, "policies.html", title="Policies", rows=rows, note="")


async def view_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    bus = request.app[CONSOLE].bus
    try:
        policy = await bus.get_policy(name)
    except RefusedError:
        return render(request, "missing.html", status=404, title="No such policy", what="policy")
    history: PolicyHistory | BaseException
    try:
        history = await bus.history(name)
    except (Unavailable, RefusedError) as exc:
        history = exc
    saved = request.query.get("saved", "")
    return render(
        request,
        "policy.html",
        title=f"Policy {name}",
        policy=policy,
        text=to_text(policy),
        latest=_latest(history),
        saved=int(saved) if saved.isdigit() else None,
    )


def _editor(
    request: web.Request,
    text: str,
    fmt: Format,
    *,
    original: str = "",
    expected: int = -1,
    errors: list[PlacedError] | None = None,
    message: str = "",
    preview: Any = None,
    status: int = 200,
) -> web.Response:
    errors = errors or []
    by_line: dict[int, list[PlacedError]] = {}
    for e in errors:
        by_line.setdefault(e.line or 0, []).append(e)
    return render(
        request,
        "edit.html",
        status=status,
        title=f"Edit {original}" if original else "New policy",
        text=text,
        fmt=fmt,
        original=original,
        expected=expected,
        errors=errors,
        lines=list(enumerate(text.splitlines(), start=1)),
        by_line=by_line,
        message=message,
        preview=preview,
        status_error=status >= 400,
    )


async def new_page(request: web.Request) -> web.StreamResponse:
    return _editor(request, TEMPLATE, "yaml", expected=0)  # a new policy must not overwrite one


async def edit_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    fmt: Format = "json" if request.query.get("fmt") == "json" else "yaml"
    try:
        policy, revision = await request.app[CONSOLE].bus.read_policy(name)
    except RefusedError:
        return render(request, "missing.html", status=404, title="No such policy", what="policy")
    return _editor(request, to_text(policy, fmt), fmt, original=name, expected=revision)


async def submit(request: web.Request) -> web.StreamResponse:
    """One form, three buttons: validate, preview (which containers it selects) and save."""
    form = await request.post()
    text = str(form.get("text", "")).replace("\r\n", "\n")
    fmt: Format = "json" if form.get("fmt") == "json" else "yaml"
    original = str(form.get("original", ""))
    action = str(form.get("action", "validate"))
    raw_expected = str(form.get("expected", ""))
    expected = int(raw_expected) if raw_expected.isdigit() else -1
    editor = functools.partial(_editor, request, text, fmt, original=original, expected=expected)
    policy, errors = parse(text, fmt)
    if policy is None:
        log.info("policy_draft_refused", errors=len(errors))
        return editor(errors=errors, status=422)
    bus = request.app[CONSOLE].bus
    who = request.remote or ""
    try:
        if action == "save":
            # Renamed in the editor: the new name must be new. Otherwise: still at the revision we
            # showed, so a change someone saved meanwhile is never silently overwritten.
            stored = await bus.put(
                policy, who=who, expected=0 if original and policy.name != original else expected
            )
            log.info("policy_saved", policy=stored.name, revision=stored.revision)
            raise web.HTTPSeeOther(f"/policies/{stored.name}?saved={stored.revision}")
        if action == "preview":
            return editor(preview=await bus.preview(policy))
        await bus.validate(policy)
        return editor(message=f"{policy.name} is valid")
    except RefusedError as exc:
        message = CONFLICT if exc.conflict else str(exc)
        return editor(errors=place(text, exc.details), message=message, status=409 if exc.conflict else 422)
    except Unavailable as exc:
        return editor(message=str(exc), status=503)


async def history_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    try:
        history = await request.app[CONSOLE].bus.history(name)
    except RefusedError:
        return render(request, "missing.html", status=404, title="No such policy", what="policy")
    revisions = history.revisions
    by_version = {r.version: r for r in revisions}
    newest = revisions[-1].version if revisions else 0
    b = _int(request.query.get("b"), newest)
    a = _int(request.query.get("a"), max((v for v in by_version if v < b), default=0))
    old, new = by_version.get(a), by_version.get(b)
    lines = diff(_text(old), _text(new), _label(name, old), _label(name, new)) if new else []
    return render(
        request,
        "history.html",
        title=f"History of {name}",
        name=name,
        revisions=list(reversed(revisions)),
        a=a,
        b=b,
        lines=lines,
    )


def _int(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() else default


def _text(rev: PolicyRevision | None) -> str:
    return to_text(rev.policy) if rev and rev.policy else ""


def _label(name: str, rev: PolicyRevision | None) -> str:
    if rev is None:
        return f"{name} (none)"
    return f"{name} version {rev.version}{' (deleted)' if rev.deleted else ''}"


async def delete_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    try:
        policy: Policy = await request.app[CONSOLE].bus.get_policy(name)
    except RefusedError:
        return render(request, "missing.html", status=404, title="No such policy", what="policy")
    return render(request, "delete.html", title=f"Delete {name}", policy=policy)


async def delete(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    form = await request.post()
    if form.get("confirm") != name:  # the confirmation page repeats the name in a hidden field
        raise web.HTTPBadRequest(text="deletion not confirmed")
    try:
        stored = await request.app[CONSOLE].bus.delete(name, who=request.remote or "")
    except RefusedError as exc:
        return render(request, "missing.html", status=404, title=str(exc), what="policy")
    log.info("policy_deleted", policy=name, revision=stored.revision)
    raise web.HTTPSeeOther("/policies")

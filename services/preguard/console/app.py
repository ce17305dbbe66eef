"""The aiohttp application: security middleware, sign-in, rendering; pages live in pages.py."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import structlog
from aiohttp import web

from preguard.console.bus import Bus, Unavailable
from preguard.console.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    Session,
    Sessions,
    csrf_ok,
    token_matches,
)
from preguard.console.state import AlertBook, Hosts
from preguard.proto import Alert

log = structlog.get_logger()
Live = tuple[int, Alert]  # an alert and its sequence number in the book
HERE = Path(__file__).parent
PUBLIC = ("/login", "/static/")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(eq=False)
class Console:
    """Everything a request handler may use: the bus client and what the subscriptions learned."""

    bus: Bus
    token: str
    hosts: Hosts = field(default_factory=Hosts)
    book: AlertBook = field(default_factory=AlertBook)
    sessions: Sessions = field(default_factory=Sessions)
    streams: set[asyncio.Queue[Live | None]] = field(default_factory=set)
    epoch: str = field(default_factory=lambda: secrets.token_hex(4))  # tells our event ids from a restart's
    secure_cookie: bool = False  # set when the console is served over TLS (or behind a TLS proxy)

    def publish(self, alert: Alert) -> None:
        """Hand one live alert to every open event stream; a stream that cannot keep up is closed."""
        live = (self.book.add(alert), alert)
        for queue in list(self.streams):
            try:
                queue.put_nowait(live)
            except asyncio.QueueFull:
                self.streams.discard(queue)
                queue.get_nowait()  # make room for the sentinel that ends that stream
                queue.put_nowait(None)

    def close_streams(self) -> None:
        for queue in list(self.streams):
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        self.streams.clear()


@dataclass(eq=False)
class Auth:
    """The request's session (None before the first visit to the sign-in page) and its cookie id."""

    sid: str | None
    session: Session | None


CONSOLE = web.AppKey("console", Console)
AUTH = web.RequestKey("auth", Auth)
TEMPLATES = web.AppKey("templates", jinja2.Environment)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is escaped unless marked safe (only our own SVG is)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    auth = request.get(AUTH)
    session = auth.session if auth else None
    context.setdefault("title", "")
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            csrf=session.csrf if session else "",
            signed_in=bool(session and session.signed_in),
            path=request.path,
            **context,
        )
    )
    return web.Response(text=html, content_type="text/html", status=status)


# -- middleware -----------------------------------------------------------------------------------
async def headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every response: pages, errors, static files and event streams alike."""
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A service that does not answer is a page saying so, not a stack trace."""
    try:
        return await handler(request)
    except Unavailable as exc:
        log.warning("service_unavailable", path=request.path, error=str(exc))
        return render(request, "unavailable.html", status=503, title="Service unavailable", error=str(exc))


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Signed-in session for everything but the sign-in page; CSRF token on every change."""
    console = request.app[CONSOLE]
    sid = request.cookies.get(SESSION_COOKIE)
    session = console.sessions.get(sid)
    request[AUTH] = Auth(sid=sid, session=session)
    public = request.path.startswith(PUBLIC)
    if not public and not (session and session.signed_in):
        if request.method in SAFE_METHODS and request.path != "/alerts/stream":
            raise web.HTTPSeeOther("/login")
        raise web.HTTPUnauthorized(text="sign in first")
    if request.method not in SAFE_METHODS:
        if not _same_origin(request):
            log.warning("request_refused", reason="cross_origin", path=request.path)
            raise web.HTTPForbidden(text="cross-origin request refused")
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = await request.post()
            value = form.get(CSRF_FIELD)
            given = value if isinstance(value, str) else None
        if not csrf_ok(session, given):
            log.warning("request_refused", reason="csrf", path=request.path)
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    """A browser names the page a change came from; it must be ours (absent: non-browser client)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


# -- sign-in ----------------------------------------------------------------------------------------
def set_session_cookie(request: web.Request, response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        httponly=True,
        samesite="Strict",
        secure=request.app[CONSOLE].secure_cookie,
        path="/",
    )


async def login_page(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    session = request[AUTH].session
    if session and session.signed_in:
        raise web.HTTPSeeOther("/")
    sid = None
    if session is None:  # an anonymous session carries the sign-in form's CSRF token
        sid, session = console.sessions.new()
        request[AUTH] = Auth(sid=sid, session=session)
    response = render(request, "login.html", title="Sign in", error="")
    if sid:
        set_session_cookie(request, response, sid)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not token_matches(given, console.token):
        log.warning("sign_in_refused", remote=request.remote)
        await asyncio.sleep(0.5)  # slows guessing down; the token is long anyway
        return render(request, "login.html", status=401, title="Sign in", error="wrong token")
    console.sessions.drop(request[AUTH].sid)
    sid, _ = console.sessions.new(signed_in=True)
    log.info("sign_in_accepted", remote=request.remote)
    response = web.HTTPSeeOther("/")
    set_session_cookie(request, response, sid)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[CONSOLE].sessions.drop(request[AUTH].sid)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def make_app(console: Console) -> web.Application:
    from preguard.console import pages, policies  # pages import render() from here

    app = web.Application(middlewares=[guard, errors], client_max_size=1024 * 1024)
    app[CONSOLE] = console
    app.on_response_prepare.append(headers)
    app[TEMPLATES] = templates()
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    pages.routes(app)
    policies.routes(app)
    app.router.add_static("/static/", HERE / "static", append_version=False)
    return app

"""Sign-in and sessions, without I/O: token check, session ids, CSRF tokens, response headers."""

from __future__ import annotations

import hmac
import secrets
import time

import msgspec

SESSION_COOKIE = "preguard_session"
CSRF_FIELD = "csrf"  # form field
CSRF_HEADER = "X-CSRF-Token"  # or this header, for script requests
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000  # sessions kept at most, so a flood of sign-in pages cannot grow memory

# No inline script or style anywhere: every script and stylesheet is a file under /static/.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` even on our
    # own form posts, and the origin check could not tell them from a cross-site post
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def new_token() -> str:
    """A sign-in token for when none is configured (logged once at start)."""
    return secrets.token_urlsafe(24)


def token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class Session(msgspec.Struct, kw_only=True):
    csrf: str
    expires: float
    signed_in: bool = False


class Sessions:
    """Server-side sessions: the cookie holds a random id only, the CSRF token lives here."""

    def __init__(self, lifetime: float = SESSION_SECONDS) -> None:
        self._sessions: dict[str, Session] = {}
        self._lifetime = lifetime

    def new(self, signed_in: bool = False) -> tuple[str, Session]:
        """A fresh id (also on sign-in, so an id planted before it is worth nothing after)."""
        self._expire()
        sid = secrets.token_urlsafe(32)
        session = Session(
            csrf=secrets.token_urlsafe(32), expires=time.monotonic() + self._lifetime, signed_in=signed_in
        )
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None or session.expires < time.monotonic():
            self._sessions.pop(sid, None)
            return None
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]
        if len(self._sessions) < MAX_SESSIONS:
            return
        # Full: anonymous ones (sign-in pages anybody can open) go first, oldest first, so a
        # flood of them cannot sign out the operators.
        anonymous = [s for s, v in self._sessions.items() if not v.signed_in]
        for sid in anonymous[: len(self._sessions) - MAX_SESSIONS + 1] or [next(iter(self._sessions))]:
            del self._sessions[sid]


def csrf_ok(session: Session | None, given: str | None) -> bool:
    return session is not None and bool(given) and hmac.compare_digest(session.csrf, given or "")

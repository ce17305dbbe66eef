"""Overview and alert pages, and the live alert stream (server-sent events)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import structlog
from aiohttp import web

from preguard.console.app import CONSOLE, Live, render
from preguard.console.bus import Unavailable
from preguard.console.chart import severity_chart
from preguard.console.state import SEVERITIES, hourly_counts, matches, merge
from preguard.proto import Alert, AlertQuery, Severity, encode

log = structlog.get_logger()
KEEPALIVE = 15.0  # seconds between comments on an idle stream, so proxies keep it open
STREAM_QUEUE = 1000  # alerts a slow browser may fall behind before its stream is closed


def routes(app: web.Application) -> None:
    app.router.add_get("/", overview)
    app.router.add_get("/alerts", alerts_page)
    app.router.add_get("/alerts/stream", alert_stream)
    app.router.add_get("/alerts/{id}", alert_page)


def query_from(request: web.Request, limit: int = 200) -> AlertQuery:
    """Filters from the query string; unknown severities are ignored rather than refused."""
    q = request.query
    known = {s.value for s in Severity}
    return AlertQuery(
        severity=[s for s in q.getall("severity", []) if s in known],
        host=q.get("host") or None,
        container=q.get("container") or None,
        policy=q.get("policy") or None,
        limit=limit,
    )


async def _alerts(request: web.Request, query: AlertQuery) -> tuple[list[Alert], str]:
    """The alert service's answer merged with what the live feed brought; a note if it is away."""
    console = request.app[CONSOLE]
    live = console.book.query(query)
    try:
        stored = (await console.bus.alerts(query)).alerts
    except Unavailable as exc:
        return live, f"{exc}; showing the alerts this console saw live"
    return merge(stored, live)[: query.limit], ""


async def overview(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    now = datetime.now(UTC)
    alerts, note = await _alerts(request, AlertQuery(since=now - timedelta(hours=1), limit=1000))
    slices, totals = hourly_counts(alerts, now)
    return render(
        request,
        "overview.html",
        title="Overview",
        hosts=console.hosts.all(),
        now=now,
        chart=severity_chart(slices, totals),
        totals=totals,
        severities=SEVERITIES,
        note=note,
    )


async def alerts_page(request: web.Request) -> web.StreamResponse:
    query = query_from(request)
    alerts, note = await _alerts(request, query)
    return render(
        request,
        "alerts.html",
        title="Alerts",
        alerts=alerts,
        query=query,
        severities=SEVERITIES,
        note=note,
    )


async def alert_page(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE]
    alert_id = request.match_info["id"]
    alert = console.book.get(alert_id)
    if alert is None:  # not seen live: ask the alert service's history
        alerts, _ = await _alerts(request, AlertQuery(limit=1000))
        alert = next((a for a in alerts if a.id == alert_id), None)
    if alert is None:
        return render(request, "missing.html", status=404, title="No such alert", what="alert")
    return render(request, "alert.html", title="Alert", alert=alert)


async def alert_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one `alert` event per new or updated alert that passes the filters.

    Event ids are `<epoch>-<sequence>`; a browser reconnecting with Last-Event-ID from this same
    console is first sent what changed while it was away.
    """
    console = request.app[CONSOLE]
    query = query_from(request)
    queue: asyncio.Queue[Live | None] = asyncio.Queue(STREAM_QUEUE)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    console.streams.add(queue)  # before the replay: nothing falls between the two
    log.info("alert_stream_opened", remote=request.remote)
    sent = 0
    try:
        await response.write(b"retry: 2000\n: connected\n\n")
        epoch, _, last = request.headers.get("Last-Event-ID", "").partition("-")
        missed = console.book.since(int(last)) if epoch == console.epoch and last.isdigit() else []
        for change in missed:
            sent = await _send(response, console.epoch, query, change, sent)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if item is None:  # the console is stopping, or this stream fell behind
                break
            sent = await _send(response, console.epoch, query, item, sent)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the browser went away
    finally:
        console.streams.discard(queue)
        log.info("alert_stream_closed", remote=request.remote)
    return response


async def _send(response: web.StreamResponse, epoch: str, query: AlertQuery, item: Live, sent: int) -> int:
    seq, alert = item
    if seq > sent and matches(query, alert):  # a replayed change is not sent twice
        # msgspec's JSON has no raw newlines, so one data line carries one alert
        await response.write(f"id: {epoch}-{seq}\nevent: alert\ndata: ".encode() + encode(alert) + b"\n\n")
    return max(sent, seq)

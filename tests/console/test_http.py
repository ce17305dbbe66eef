"""The console over HTTP against a real nats-server and the real policy service: safety and pages."""

from __future__ import annotations

import html
import re

import aiohttp
import msgspec
import nats
from nats.aio.client import Client as NATS

from preguard.console import ConsoleServer, serve
from preguard.policy.service import PolicyService
from preguard.proto import Policy, PolicyList, Severity, Subjects, decode, decode_policy, encode
from tests.console.conftest import TOKEN, XSS, Client, alert, container, heartbeat

POLICY = "name: lock\nseverity: high\nrules:\n  - {kind: file, path: /etc/shadow, access: read}\n"
BAD_PORT = 'name: lock\nrules:\n  - kind: network\n    cidr: 127.0.0.2/32\n    ports: "70000"\n'


async def stored_names(nc: NATS, subjects: Subjects) -> list[str]:
    reply = await nc.request(subjects.api_policy("list"), b"{}", timeout=3)
    return [p.name for p in decode(reply.data, PolicyList).policies]


async def test_pages_need_sign_in(client: Client) -> None:
    for path in ("/", "/policies", "/alerts", "/policies/new"):
        status, _ = await client.get(path)
        assert status == 303, path
    async with client.session.get(client.base + "/alerts/stream") as r:
        assert r.status == 401


async def test_wrong_token_is_refused_and_right_one_signs_in(client: Client) -> None:
    response = await client.sign_in("not-the-token")
    assert response.status == 401
    assert (await client.get("/"))[0] == 303
    response = await client.sign_in()
    assert response.status == 303
    status, page = await client.get("/")
    assert status == 200
    assert "Overview" in page


async def test_session_cookie_is_httponly_samesite_strict_and_new_on_sign_in(client: Client) -> None:
    await client.get("/login")
    before = {c.key: c.value for c in client.session.cookie_jar}["preguard_session"]
    response = await client.post("/login", {"token": TOKEN})
    cookie = response.cookies["preguard_session"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie.value != before  # an id known before sign-in is worth nothing after it


async def test_every_page_carries_a_strict_content_security_policy(client: Client) -> None:
    async with client.session.get(client.base + "/login") as r:
        csp = r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        body = await r.text()
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert "<script>" not in body  # scripts are files only: /static/console.js
    for path in ("/static/console.js", "/nowhere", "/alerts/stream"):
        async with client.session.get(client.base + path) as r:
            assert r.headers["Content-Security-Policy"] == csp, path


async def test_change_without_csrf_token_is_refused_and_nothing_is_stored(
    client: Client, policy_service: PolicyService, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    response = await client.post(
        "/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save"}, csrf=False
    )
    assert response.status == 403
    response = await client.post(
        "/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save", "csrf": "forged"}, csrf=False
    )
    assert response.status == 403
    assert await stored_names(nc, subjects) == []
    response = await client.post("/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save"})
    assert response.status == 303
    assert await stored_names(nc, subjects) == ["lock"]


async def test_change_from_another_origin_is_refused(client: Client, policy_service: PolicyService) -> None:
    await client.sign_in()
    response = await client.post(
        "/policies/edit",
        {"text": POLICY, "fmt": "yaml", "action": "save"},
        headers={"Origin": "http://evil.example"},
    )
    assert response.status == 403


async def test_invalid_draft_shows_the_error_at_its_field_line(
    client: Client, policy_service: PolicyService
) -> None:
    await client.sign_in()
    response = await client.post("/policies/edit", {"text": BAD_PORT, "fmt": "yaml", "action": "save"})
    assert response.status == 422
    _status, page = await client.get("/policies")
    assert "lock" not in page
    async with client.session.post(
        client.base + "/policies/edit",
        data={"text": BAD_PORT, "fmt": "yaml", "action": "validate", "csrf": client.csrf},
    ) as r:
        page = await r.text()
    # the error sits in the listing inside line 5, where `ports` is, and nowhere else
    line5 = page.index('<li class="line has-error" data-line="5">')
    end5 = page.index("</li>", line5)
    err = page.index('<div class="field-error" data-field="$.rules[0].ports">')
    assert line5 < err < end5
    assert "port 70000 is outside 1-65535" in page[err:end5]
    assert page.count('class="field-error"') == 1


async def test_saved_policy_is_listed_with_revision_and_history_shows_the_diff(
    client: Client, policy_service: PolicyService
) -> None:
    await client.sign_in()
    response = await client.post("/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save"})
    assert response.headers["Location"].startswith("/policies/lock?saved=")
    status, page = await client.get("/policies")
    assert 'data-policy="lock"' in page
    changed = POLICY.replace("severity: high", "severity: critical")
    await client.post("/policies/edit", {"text": changed, "fmt": "yaml", "action": "save"})
    status, page = await client.get("/policies/lock/history")
    assert status == 200
    assert '<span class="del">-severity: high</span>' in page
    assert '<span class="add">+severity: critical</span>' in page


async def test_delete_needs_the_confirmation_form(
    client: Client, policy_service: PolicyService, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    await client.post("/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save"})
    _status, page = await client.get("/policies/lock/delete")
    assert 'id="confirm-delete"' in page
    assert (await client.post("/policies/lock/delete", {})).status == 400
    assert await stored_names(nc, subjects) == ["lock"]
    assert (await client.post("/policies/lock/delete", {"confirm": "lock"})).status == 303
    assert await stored_names(nc, subjects) == []


async def test_preview_lists_the_containers_a_draft_would_select(
    client: Client, policy_service: PolicyService, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    beat = heartbeat("h1", container("web-1", "aaaaaaaaaaa1"), container("db-1", "bbbbbbbbbbb2"))
    await nc.publish(subjects.status("h1"), encode(beat))
    await nc.flush()
    draft = POLICY + "selector:\n  containers: ['web-*']\n"
    for _ in range(50):  # the policy service learns containers from heartbeats, asynchronously
        async with client.session.post(
            client.base + "/policies/edit",
            data={"text": draft, "fmt": "yaml", "action": "preview", "csrf": client.csrf},
        ) as r:
            page = await r.text()
        if 'data-container="web-1"' in page:
            break
        await nc.publish(subjects.status("h1"), encode(beat))
        await nc.flush()
    assert 'data-container="web-1"' in page
    assert 'data-container="db-1"' not in page


async def test_text_from_containers_is_escaped_on_every_page(
    client: Client, console: ConsoleServer, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    sub = await nc.subscribe(subjects.alerts_all())
    uncovered = {"pid": 7, "exe": XSS, "reason": "static_binary"}
    beat = heartbeat("h1", container("web-1", uncovered=[uncovered]))  # type: ignore[list-item]
    await nc.publish(subjects.status("h1"), encode(beat))
    await nc.publish(subjects.alerts("high", "h1"), encode(alert(XSS)))
    await sub.next_msg(timeout=2)
    await nc.flush()
    for path in ("/", "/alerts", "/alerts/a1"):
        for _ in range(50):  # the console's own subscription may lag ours by a moment
            status, page = await client.get(path)
            if html.escape(XSS) in page or html.escape(XSS, quote=False) in page:
                break
        assert status == 200, path
        assert XSS not in page, path
        assert html.escape(XSS, quote=False) in page, path


async def next_line(stream: aiohttp.ClientResponse) -> bytes:
    line = await stream.content.readline()
    assert line, "the event stream ended"
    return line.strip()


async def test_live_stream_sends_matching_alerts_as_server_sent_events(
    client: Client, console: ConsoleServer, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    timeout = aiohttp.ClientTimeout(total=10)
    async with client.session.get(
        client.base + "/alerts/stream?severity=critical", timeout=timeout
    ) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        while await next_line(stream) != b": connected":
            pass
        await nc.publish(subjects.alerts("high", "h1"), encode(alert("/etc/shadow", alert_id="skip")))
        await nc.publish(
            subjects.alerts("critical", "h1"),
            encode(alert("/etc/shadow", 3, alert_id="keep", severity=Severity.CRITICAL)),
        )
        lines = []
        while not lines or not lines[-1].startswith(b"data:"):
            if line := await next_line(stream):
                lines.append(line)
    assert lines[-2] == b"event: alert"
    assert b'"id":"keep"' in lines[-1]
    assert b'"count":3' in lines[-1]
    assert not any(b'"id":"skip"' in line for line in lines)


async def test_overview_chart_counts_alerts_of_the_last_hour_by_severity(
    client: Client, console: ConsoleServer, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    sub = await nc.subscribe(subjects.alerts_all())
    for i in range(3):
        await nc.publish(subjects.alerts("high", "h1"), encode(alert("/x", alert_id=f"a{i}")))
        await sub.next_msg(timeout=2)
    for _ in range(50):
        _status, page = await client.get("/")
        if 'data-total="high">3<' in page:
            break
    assert 'data-total="high">3<' in page
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="chart"' in page
    assert 'data-severity="high" data-count="3"' in page


async def test_save_over_a_change_made_meanwhile_is_refused_as_a_conflict(
    client: Client, policy_service: PolicyService, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    await client.post("/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save"})
    _, page = await client.get("/policies/lock/edit")
    expected = re.search(r'name="expected" value="(\d+)"', page)
    assert expected is not None
    someone_else = POLICY.replace("severity: high", "severity: low")
    await nc.request(subjects.api_policy("put"), encode(decode_policy(someone_else, "yaml")), timeout=3)
    mine = POLICY.replace("severity: high", "severity: critical")
    form = {"text": mine, "fmt": "yaml", "action": "save", "original": "lock", "expected": expected[1]}
    async with client.session.post(client.base + "/policies/edit", data={**form, "csrf": client.csrf}) as r:
        assert r.status == 409
        assert "changed (or created) by someone else" in await r.text()
    reply = await nc.request(subjects.api_policy("get"), b'{"name": "lock"}', timeout=3)
    assert decode(reply.data, Policy).severity == Severity.LOW  # their change stands


async def test_new_policy_never_overwrites_one_of_the_same_name(
    client: Client, policy_service: PolicyService
) -> None:
    await client.sign_in()
    await client.post("/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save"})
    _, page = await client.get("/policies/new")
    assert 'name="expected" value="0"' in page
    response = await client.post(
        "/policies/edit", {"text": POLICY, "fmt": "yaml", "action": "save", "expected": "0"}
    )
    assert response.status == 409


async def test_without_a_policy_service_the_pages_say_so(client: Client) -> None:
    await client.sign_in()
    status, page = await client.get("/policies/lock")
    assert status == 503
    assert "no policy service is answering" in page
    status, page = await client.get("/policies")
    assert status == 200
    assert "no policy service is answering" in page


async def test_a_reconnecting_stream_is_sent_what_changed_while_it_was_away(
    client: Client, console: ConsoleServer, nc: NATS, subjects: Subjects
) -> None:
    await client.sign_in()
    sub = await nc.subscribe(subjects.alerts_all())
    url = client.base + "/alerts/stream"
    async with client.session.get(url) as stream:
        while await next_line(stream) != b": connected":
            pass
        await nc.publish(subjects.alerts("high", "h1"), encode(alert("/seen", alert_id="seen")))
        while not (line := await next_line(stream)).startswith(b"id: "):
            pass
        last_id = line.removeprefix(b"id: ").decode()
    # away: two alerts change while no stream is open
    await nc.publish(subjects.alerts("high", "h1"), encode(alert("/missed", alert_id="missed")))
    await nc.publish(subjects.alerts("high", "h1"), encode(alert("/seen", 2, alert_id="seen")))
    for _ in range(3):
        await sub.next_msg(timeout=2)
    for _ in range(50):  # the console's own subscription may lag ours by a moment
        seen = console.console.book.get("seen")
        if console.console.book.get("missed") and seen is not None and seen.count == 2:
            break
        await nc.flush()
    async with client.session.get(url, headers={"Last-Event-ID": last_id}) as stream:
        data = []
        while len(data) < 2:
            if (line := await next_line(stream)).startswith(b"data: "):
                data.append(msgspec.json.decode(line.removeprefix(b"data: ")))
    assert [(d["id"], d["count"]) for d in data] == [("missed", 1), ("seen", 2)]


async def test_a_closed_nats_connection_is_a_page_saying_so(nats_url: str, subjects: Subjects) -> None:
    own = await nats.connect(nats_url)
    server = await serve(own, subjects, port=0, token=TOKEN)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            client = Client(session, server.url)
            await client.sign_in()
            await own.close()
            status, page = await client.get("/policies/lock")
    finally:
        await server.stop()
    assert status == 503
    assert "NATS:" in page

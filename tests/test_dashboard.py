"""The dashboard (``/notify/``): the view's context, then the page in a real Chromium against
daphne — live events, catch-up, a server restart, a reset, publishing, text-only rendering,
the keyboard — and the screenshots in docs/.

``NOTIFY_SCREENSHOTS=1`` makes ``test_screenshots`` write docs/dashboard-live.png and
docs/dashboard-catchup.png; otherwise it writes them to a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from playwright.sync_api import Page, Request, expect

import notify
from notify.api import prepare, publish_many
from notify.models import Event
from tests.conftest import REDIS_PREFIX, ROOT, Server, SSEClient, StartServer, manage

DASHBOARD = "/notify/"
# What the page shows for a value it does not have (an en dash).
NO_VALUE = "\u2013"
# What Chromium logs when a request fails; expected where a test makes one fail.
CONNECTION_ERRORS = r"ERR_CONNECTION_REFUSED|ERR_INCOMPLETE_CHUNKED_ENCODING|ERR_EMPTY_RESPONSE"


def refuse_broadcast(user: Any, channel: str) -> bool:
    """An ``AUTHORIZE`` policy for these tests: everything but ``broadcast``."""
    return channel != "broadcast"


def make_user(username: str, *, can_publish: bool) -> User:
    user = User.objects.create_user(username, password="unused-password", is_staff=can_publish)
    if can_publish:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="notify", codename="add_event")
        )
    return user


def page_config(response: Any) -> dict[str, Any]:
    found = re.search(
        r'<script id="notify-dashboard-config" type="application/json">(.*?)</script>',
        response.content.decode(),
    )
    assert found is not None
    return json.loads(found.group(1))


# --- the view -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_users_watch_broadcast_and_cannot_publish(client: Client) -> None:
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    assert page_config(response) == {
        "stream_url": "/notify/stream/",
        "channels": ["broadcast"],
        "publish_url": None,
        "can_publish": False,
        "presence_url": "/notify/presence/",
        "presence_seconds": 5.0,
    }
    assert b"notify-publish-form" not in response.content
    assert b'src="/static/notify/dashboard.js"' in response.content


@pytest.mark.django_db
def test_logged_in_users_also_watch_their_own_channel(client: Client) -> None:
    user = make_user("reader", can_publish=False)
    client.force_login(user)
    response = client.get(DASHBOARD)
    config = page_config(response)
    assert config["channels"] == ["broadcast", f"user:{user.pk}"]
    assert config["can_publish"] is False
    assert b"notify-publish-form" not in response.content


@pytest.mark.django_db
def test_publishers_get_the_form_and_a_csrf_token(client: Client) -> None:
    client.force_login(make_user("publisher", can_publish=True))
    response = client.get(DASHBOARD)
    config = page_config(response)
    assert config["can_publish"] is True
    assert config["publish_url"] == "/notify/publish/"
    assert b'id="notify-publish-form"' in response.content
    assert b'name="csrfmiddlewaretoken"' in response.content
    assert "csrftoken" in response.cookies


@pytest.mark.django_db
def test_channels_the_policy_refuses_are_left_out(client: Client, settings: Any) -> None:
    settings.NOTIFY = {**settings.NOTIFY, "AUTHORIZE": "tests.test_dashboard.refuse_broadcast"}
    user = make_user("reader", can_publish=False)
    client.force_login(user)
    response = client.get(DASHBOARD)
    assert page_config(response)["channels"] == [f"user:{user.pk}"]
    assert b"Not subscribed to broadcast" in response.content


def isolated_presence() -> dict[str, Any]:
    """NOTIFY overrides for a server whose presence reports no other test's server shares
    (those of a stopped server linger for three intervals), reported every 0.2 s."""
    return {"REDIS_PREFIX": f"{REDIS_PREFIX}-{uuid.uuid4().hex[:8]}", "PRESENCE_SECONDS": 0.2}


def listening(response: Any) -> list[tuple[str, str]]:
    """The channels the page lists, each with what it says of who is listening."""
    return re.findall(
        r'<span class="notify-presence" data-channel="([^"]+)"[^>]*>([^<]*)</span>',
        response.content.decode(),
    )


@pytest.mark.django_db(transaction=True)
def test_the_page_comes_with_the_streams_open_on_its_channels(
    client: Client, start_server: StartServer, settings: Any
) -> None:
    isolated = isolated_presence()
    server = start_server(**isolated)
    settings.NOTIFY = {**settings.NOTIFY, "REDIS_PREFIX": isolated["REDIS_PREFIX"]}
    user = make_user("reader", can_publish=False)
    client.force_login(user)
    with SSEClient(f"{server.url}/notify/stream/?channel=broadcast") as stream:
        assert stream.next().event == "notify.open"
        # A server reports at once, then every PRESENCE_SECONDS.
        deadline = time.monotonic() + 5
        while (shown := listening(client.get(DASHBOARD)))[0] != ("broadcast", "1 listening"):
            assert time.monotonic() < deadline, shown
            time.sleep(0.05)
    assert shown == [("broadcast", "1 listening"), (f"user:{user.pk}", "0 listening")]


@pytest.mark.django_db
def test_the_page_says_unknown_when_the_broker_cannot_tell(client: Client, settings: Any) -> None:
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        response = client.get(DASHBOARD)
    assert response.status_code == 200
    assert listening(response) == [("broadcast", "unknown")]


@pytest.mark.django_db
def test_only_get_and_head(client: Client) -> None:
    assert client.head(DASHBOARD).status_code == 200
    assert client.post(DASHBOARD).status_code == 405


# --- the page -----------------------------------------------------------------------------


def open_dashboard(page: Page, server: Server, transport: str | None = None) -> None:
    """Load the dashboard and wait until its stream has told the cursor (``notify.open``, or
    the end of a catch-up or a reset), so that what is published next arrives live."""
    query = f"?transport={transport}" if transport else ""
    page.goto(f"{server.url}{DASHBOARD}{query}")
    expect(page.locator("#notify-status")).to_have_attribute("data-state", "open")
    page.wait_for_selector(
        "#notify-log .notify-line-system .notify-control >> text=/notify\\.(open|catchup-end)/"
    )


def lines(page: Page) -> list[dict[str, Any]]:
    """The log's lines, oldest first."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#notify-log .notify-line')].reverse().map(
            (line) => ({
                kind: line.classList.contains('notify-line-system') ? 'system'
                    : line.classList.contains('notify-line-replayed') ? 'replayed' : 'live',
                badge: line.querySelector('.notify-badge').textContent,
                id: line.dataset.id ? Number(line.dataset.id) : null,
                channel: line.querySelector('.notify-channel')?.textContent ?? null,
                type: line.querySelector('.notify-type')?.textContent ?? null,
                data: line.querySelector('.notify-data')?.textContent ?? null,
                control: line.querySelector('.notify-control')?.textContent ?? null,
                text: line.textContent,
            }))"""
    )


def event_lines(page: Page) -> list[dict[str, Any]]:
    return [line for line in lines(page) if line["kind"] != "system"]


def system_lines(page: Page) -> list[dict[str, Any]]:
    return [line for line in lines(page) if line["kind"] == "system"]


def wait_for_event_lines(page: Page, count: int, timeout: float = 10_000) -> list[dict[str, Any]]:
    page.wait_for_function(
        f"() => document.querySelectorAll('#notify-log .notify-line[data-id]').length >= {count}",
        timeout=timeout,
    )
    return event_lines(page)


def wait_for_control(page: Page, name: str, count: int = 1) -> None:
    """Wait until the log has ``count`` system lines for the control event ``name``."""
    page.wait_for_function(
        """([name, count]) => [...document.querySelectorAll('#notify-log .notify-control')]
            .filter((control) => control.textContent === name).length >= count""",
        arg=[name, count],
    )


def counters(page: Page) -> dict[str, int]:
    return {
        name: int(page.locator(f"#notify-{name}-count").text_content() or "")
        for name in ("live", "replayed", "reset")
    }


def expect_state(page: Page, state: str, timeout: float = 10_000) -> None:
    expect(page.locator("#notify-status")).to_have_attribute("data-state", state, timeout=timeout)


def log_in(page: Page, server: Server, user: User) -> None:
    """Give the browser the session of ``user``, as if it had logged in."""
    client = Client()
    client.force_login(user)
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": server.url}]
    )


# The server processes read what the test writes: it must be committed.
in_browser = pytest.mark.django_db(transaction=True)


TRANSPORTS = pytest.mark.parametrize("transport", ["fetch", "eventsource", "websocket"])


@in_browser
@TRANSPORTS
def test_live_events(server: Server, page: Page, transport: str) -> None:
    open_dashboard(page, server, transport)
    expect(page.locator("#notify-transport")).to_have_value(transport)
    expect(page.locator("#notify-status-text")).to_have_text("open")
    expect(page.locator("#notify-channels code")).to_have_text(["broadcast"])
    published = [notify.publish("broadcast", {"n": n}) for n in range(3)]
    notify.publish("elsewhere", {"not": "subscribed"})
    shown = wait_for_event_lines(page, 3)
    assert [line["id"] for line in shown] == [event.id for event in published]
    assert [line["badge"] for line in shown] == ["live"] * 3
    assert [line["data"] for line in shown] == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert {line["channel"] for line in shown} == {"broadcast"}
    assert counters(page) == {"live": 3, "replayed": 0, "reset": 0}
    expect(page.locator("#notify-last-id")).to_have_text(str(published[-1].id))
    expect(page.locator("#notify-rate-summary")).to_contain_text("3 in the last minute")
    assert page.locator("#notify-rate-chart rect.notify-bar-live").count() >= 1
    # The connection time ticks.
    expect(page.locator("#notify-uptime")).to_have_text(re.compile(r"^00:0[1-9]$"))
    # Connected: only Connect is off.
    expect(page.locator("#notify-connect")).to_be_disabled()
    for name in ("disconnect", "reconnect", "clear-history", "clear-log"):
        expect(page.locator(f"#notify-{name}")).to_be_enabled()


@in_browser
@TRANSPORTS
def test_catch_up_after_disconnect_and_reconnect(
    server: Server, page: Page, transport: str
) -> None:
    open_dashboard(page, server, transport)
    before = notify.publish("broadcast", "before")
    wait_for_event_lines(page, 1)
    page.click("#notify-disconnect")
    expect_state(page, "closed")
    expect(page.locator("#notify-uptime")).to_have_text(NO_VALUE)
    expect(page.locator("#notify-connect")).to_be_enabled()
    expect(page.locator("#notify-disconnect")).to_be_disabled()
    missed = [notify.publish("broadcast", {"missed": n}) for n in range(5)]
    page.click("#notify-reconnect")
    wait_for_event_lines(page, 6)
    expect_state(page, "open")
    after = [notify.publish("broadcast", {"after": n}) for n in range(2)]
    shown = wait_for_event_lines(page, 8)
    assert [(line["id"], line["kind"]) for line in shown] == [
        (before.id, "live"),
        *[(event.id, "replayed") for event in missed],
        *[(event.id, "live") for event in after],
    ]
    # The badge says it in words, not only in colour.
    assert [line["badge"] for line in shown[1:6]] == ["replayed"] * 5
    assert counters(page) == {"live": 3, "replayed": 5, "reset": 0}
    controls = [line["control"] for line in system_lines(page)]
    assert controls == [
        "notify.open",
        "disconnect",
        "reconnect",
        "notify.catchup-start",
        "notify.catchup-end",
    ]
    texts = {line["control"]: line["text"] for line in system_lines(page)}
    assert f"after #{before.id}" in texts["notify.catchup-start"]
    assert f"5 replayed, through #{missed[-1].id}" in texts["notify.catchup-end"]


def send_event(redis_url: str, channel: str, data: str) -> int:
    done = manage("send_event", channel, data, redis=redis_url)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@in_browser
@pytest.mark.parametrize("transport", ["fetch", "websocket"])
def test_recovers_from_a_server_restart_by_itself(
    start_server: StartServer, page: Page, redis_url: str, transport: str
) -> None:
    page.expect_console_errors(CONNECTION_ERRORS)  # type: ignore[attr-defined]
    server = start_server()
    open_dashboard(page, server, transport)
    page.evaluate("() => { window.notReloaded = true; }")
    first = notify.publish("broadcast", "before the restart")
    wait_for_event_lines(page, 1)

    server.stop()
    expect_state(page, "reconnecting")
    sent = [
        send_event(redis_url, "broadcast", json.dumps({"while": "down", "n": n})) for n in (1, 2)
    ]
    start_server(port=server.port)

    shown = wait_for_event_lines(page, 3, timeout=30_000)
    expect_state(page, "open")
    assert [(line["id"], line["kind"]) for line in shown] == [
        (first.id, "live"),
        (sent[0], "replayed"),
        (sent[1], "replayed"),
    ]
    assert page.evaluate("() => window.notReloaded") is True
    later = notify.publish("broadcast", "after the restart")
    shown = wait_for_event_lines(page, 4)
    assert [line["id"] for line in shown] == [first.id, *sent, later.id]
    assert counters(page) == {"live": 2, "replayed": 2, "reset": 0}


@in_browser
def test_a_cursor_older_than_retention_is_shown_as_a_reset(server: Server, page: Page) -> None:
    kept_cursor = notify.publish("broadcast", "seen")
    open_dashboard(page, server)
    expect(page.locator("#notify-last-id")).to_have_text(str(kept_cursor.id))
    # Leave the page: the cursor stays in localStorage.
    page.goto("about:blank")
    gone = [notify.publish("broadcast", {"gone": n}) for n in range(2)]
    kept = [notify.publish("broadcast", {"kept": n}) for n in range(2)]
    Event.objects.filter(id__lte=gone[-1].id).delete()

    page.goto(f"{server.url}{DASHBOARD}")
    shown = wait_for_event_lines(page, 2)
    assert [(line["id"], line["kind"]) for line in shown] == [(e.id, "replayed") for e in kept]
    expect(page.locator("#notify-reset-count")).to_have_text("1")
    reset = [line for line in system_lines(page) if line["control"] == "notify.reset"]
    assert len(reset) == 1
    assert "history-gone" in reset[0]["text"]
    assert f"oldest kept #{kept[0].id}" in reset[0]["text"]
    assert counters(page) == {"live": 0, "replayed": 2, "reset": 1}


@in_browser
def test_publishing_from_the_page(server: Server, page: Page) -> None:
    user = make_user("publisher", can_publish=True)
    log_in(page, server, user)
    # EventSource hears only the types it listens to: the page listens to what it publishes.
    open_dashboard(page, server, "eventsource")
    expect(page.locator("#notify-channels code")).to_have_text(["broadcast", f"user:{user.pk}"])

    page.fill("#notify-publish-channel", f"user:{user.pk}")
    page.fill("#notify-publish-event", "greeting")
    page.fill("#notify-publish-data", '{"hello": "world"}')
    page.click("#notify-publish-submit")
    result = page.locator("#notify-publish-result")
    expect(result).to_have_text(re.compile(rf"^Published #\d+ on user:{user.pk}$"))
    (line,) = wait_for_event_lines(page, 1)
    event = Event.objects.get()
    assert (line["id"], line["channel"], line["type"], line["data"]) == (
        event.id,
        f"user:{user.pk}",
        "greeting",
        '{"hello":"world"}',
    )
    assert line["kind"] == "live"

    # Invalid JSON is caught before anything is sent.
    posts: list[str] = []

    def record_post(request: Request) -> None:
        if request.method == "POST":
            posts.append(request.url)

    page.on("request", record_post)
    page.fill("#notify-publish-data", "{oops")
    page.click("#notify-publish-submit")
    expect(result).to_contain_text("Data is not valid JSON")
    expect(result).to_have_attribute("data-outcome", "error")
    expect(page.locator("#notify-publish-data")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#notify-publish-data")).to_be_focused()
    assert posts == []

    # The API's refusal is shown as it gave it.
    page.expect_console_errors(r"status of 400")  # type: ignore[attr-defined]
    page.fill("#notify-publish-data", "1")
    page.fill("#notify-publish-channel", "a b")
    page.click("#notify-publish-submit")
    expect(result).to_have_text(re.compile(r'^400: channel "a b" .*space'))
    expect(page.locator("#notify-publish-data")).not_to_have_attribute("aria-invalid", "true")
    assert Event.objects.count() == 1


@in_browser
@pytest.mark.parametrize("transport", ["eventsource", "websocket"])
def test_switching_transport_resumes_from_the_cursor(
    server: Server, page: Page, transport: str
) -> None:
    open_dashboard(page, server)
    first = notify.publish("broadcast", "over fetch")
    wait_for_event_lines(page, 1)
    page.select_option("#notify-transport", transport)
    wait_for_control(page, "notify.catchup-end")
    expect_state(page, "open")
    assert page.url.endswith(f"/notify/?transport={transport}")
    second = notify.publish("broadcast", f"over {transport}")
    shown = wait_for_event_lines(page, 2)
    assert [(line["id"], line["kind"]) for line in shown] == [
        (first.id, "live"),
        (second.id, "live"),
    ]
    texts = {line["control"]: line["text"] for line in system_lines(page)}
    assert f"after #{first.id}" in texts["notify.catchup-start"]
    assert f"now over {transport}" in texts["transport"]
    # The choice is kept: a reload comes back to it.
    page.reload()
    expect(page.locator("#notify-transport")).to_have_value(transport)


@in_browser
def test_anonymous_users_have_no_publish_box_and_are_refused(server: Server, page: Page) -> None:
    open_dashboard(page, server)
    expect(page.locator("#notify-publish-form")).to_have_count(0)
    page.expect_console_errors(r"status of 401")  # type: ignore[attr-defined]
    status = page.evaluate(
        """async () => (await fetch('/notify/publish/', {
            method: 'POST', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({channel: 'broadcast', data: 1}),
        })).status"""
    )
    assert status == 401
    assert not Event.objects.exists()


@in_browser
def test_event_content_is_shown_as_text(server: Server, page: Page) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.expect_console_errors(r"status of 400")  # type: ignore[attr-defined]
    log_in(page, server, make_user("publisher", can_publish=True))
    open_dashboard(page, server)
    attack = "<img src=x onerror=alert(1)>"
    notify.publish("broadcast", attack)
    notify.publish("broadcast", {"html": "<script>alert(2)</script>", attack: attack})
    # Channels and types cannot hold "<": the API's error, which quotes the channel, can.
    page.fill("#notify-publish-channel", attack)
    page.click("#notify-publish-submit")
    expect(page.locator("#notify-publish-result")).to_contain_text(attack)

    shown = wait_for_event_lines(page, 2)
    assert shown[0]["data"] == json.dumps(attack)
    assert attack in shown[1]["data"] and "<script>alert(2)</script>" in shown[1]["data"]
    expect(page.locator("#notify-dashboard img")).to_have_count(0)
    expect(page.locator("#notify-dashboard script")).to_have_count(0)
    page.wait_for_timeout(300)
    assert dialogs == []


@in_browser
def test_keyboard_reaches_and_works_the_buttons(server: Server, page: Page) -> None:
    open_dashboard(page, server)
    notify.publish("broadcast", "one")
    wait_for_event_lines(page, 1)

    def tab_to(element_id: str) -> None:
        for _ in range(20):
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    tab_to("notify-disconnect")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Enter")
    expect_state(page, "closed")
    # The button that disabled itself hands the focus on, rather than dropping it.
    expect(page.locator("#notify-connect")).to_be_focused()
    page.keyboard.press("Space")
    wait_for_control(page, "notify.catchup-end")
    expect_state(page, "open")

    tab_to("notify-clear-history")
    page.keyboard.press("Space")
    expect(page.locator("#notify-last-id")).to_have_text(NO_VALUE)
    assert system_lines(page)[-1]["control"] == "clear"

    tab_to("notify-clear-log")
    page.keyboard.press("Enter")
    expect(page.locator("#notify-log .notify-line")).to_have_count(0)
    expect(page.locator("#notify-clear-log")).to_be_disabled()
    # The log itself is focusable, for scrolling it from the keyboard.
    expect(page.locator("#notify-log")).to_be_focused()


def luminance(css_color: str) -> float:
    """Relative luminance (0 black, 1 white) of an ``rgb(r, g, b)`` computed colour."""
    red, green, blue = (int(part) / 255 for part in re.findall(r"\d+", css_color)[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


@in_browser
def test_dark_mode_and_a_narrow_screen(server: Server, page: Page) -> None:
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 360, "height": 740})
    open_dashboard(page, server)
    notify.publish("broadcast", "in the dark")
    wait_for_event_lines(page, 1)
    text, background = page.evaluate(
        """() => [getComputedStyle(document.querySelector('.notify-data')).color,
                  getComputedStyle(document.body).backgroundColor]"""
    )
    assert luminance(text) > 0.7
    assert luminance(background) < 0.2
    # Nothing sticks out sideways on a phone.
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


@in_browser
def test_the_log_keeps_the_newest_500_lines(server: Server, page: Page) -> None:
    open_dashboard(page, server)
    published = publish_many([prepare("broadcast", n) for n in range(520)])
    page.wait_for_function(
        f"() => document.querySelector('#notify-log .notify-line')?.dataset.id === "
        f"'{published[-1].id}'"
    )
    shown = lines(page)
    assert len(shown) == 500
    assert shown[-1]["id"] == published[-1].id
    assert counters(page)["live"] == 520


@in_browser
def test_the_page_shows_who_is_listening_as_streams_come_and_go(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(**isolated_presence())
    open_dashboard(page, server)
    figure = page.locator('.notify-presence[data-channel="broadcast"]')
    # The page's own stream counts.
    expect(figure).to_have_text("1 listening")
    others = [SSEClient(f"{server.url}/notify/stream/?channel=broadcast") for _ in range(2)]
    try:
        for other in others:
            assert other.next().event == "notify.open"
        expect(figure).to_have_text("3 listening")
    finally:
        for other in others:
            other.close()
    expect(figure).to_have_text("1 listening")


@in_browser
def test_the_page_says_unknown_when_redis_is_unreachable(
    start_server: StartServer, page: Page
) -> None:
    server = start_server(redis="redis://127.0.0.1:1/0", PRESENCE_SECONDS=0.2)
    open_dashboard(page, server)
    figure = page.locator('.notify-presence[data-channel="broadcast"]')
    expect(figure).to_have_text("unknown")
    # Refreshed, and still not taken for nobody.
    with page.expect_response(re.compile(r"/notify/presence/\?channel=broadcast$")) as answer:
        pass
    assert answer.value.json() == {"broadcast": None}
    expect(figure).to_have_text("unknown")


# --- screenshots --------------------------------------------------------------------------


def screenshot_dir(tmp_path: Path) -> Path:
    if os.environ.get("NOTIFY_SCREENSHOTS"):
        return ROOT / "docs"
    return tmp_path


# Ids from 1, as in a fresh project.
@pytest.mark.django_db(transaction=True, reset_sequences=True)
def test_screenshots(server: Server, page: Page, tmp_path: Path) -> None:
    """The dashboard live, then in the middle of a catch-up (the stream slowed down by
    Chromium's network throttling, so that the catch-up lasts long enough to be seen)."""
    target = screenshot_dir(tmp_path)
    user = make_user("demo", can_publish=True)
    log_in(page, server, user)
    open_dashboard(page, server)
    samples = [
        ("broadcast", "message", {"text": "Deploy v2.4 finished"}),
        (f"user:{user.pk}", "export", {"file": "orders-2026-11.csv", "rows": 1832}),
        ("broadcast", "message", {"text": "Maintenance at 18:00 UTC"}),
        (f"user:{user.pk}", "mention", {"by": "ana", "in": "#orders"}),
        ("broadcast", "order.paid", {"order": 7, "total": "49.90"}),
    ]
    # A rising rate, for the chart.
    published = 0
    for second in range(len(samples)):
        for channel, event, data in samples[: second + 1]:
            notify.publish(channel, data, event=event)
            published += 1
        page.wait_for_timeout(700)
    wait_for_event_lines(page, published)
    page.screenshot(path=str(target / "dashboard-live.png"), full_page=True)

    page.click("#notify-disconnect")
    expect_state(page, "closed")
    missed = publish_many(
        [prepare("broadcast", {"n": n, "text": f"missed while away #{n}"}) for n in range(400)]
    )
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": 4000, "uploadThroughput": -1},
    )
    page.click("#notify-reconnect")
    expect_state(page, "catching-up")
    page.wait_for_function(
        "() => Number(document.querySelector('#notify-replayed-count').textContent) >= 6",
        timeout=20_000,
    )
    page.screenshot(path=str(target / "dashboard-catchup.png"), full_page=True)
    expect_state(page, "catching-up")

    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    expect_state(page, "open", timeout=30_000)
    assert counters(page)["replayed"] == len(missed)

import notify
from tests.conftest import SSEClient, payload


def test_live_and_replay(server):
    with SSEClient(f"{server.url}/notify/stream/") as client:
        opened = client.next()
        assert opened.event == "notify.open"
        event = notify.publish("broadcast", {"hi": 1})
        got = client.next()
        assert got.id == str(event.id)
        assert payload(got)["data"] == {"hi": 1}
    with SSEClient(f"{server.url}/notify/stream/", last_event_id=opened.id) as client:
        events = client.until(lambda e: e.event == "notify.catchup-end")
        assert [e.event for e in events] == ["notify.catchup-start", "message", "notify.catchup-end"]

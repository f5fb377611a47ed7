"""notify.checks: each system check fires for its misconfiguration, and none for the defaults."""

import io

import pytest
from django.core.checks import Error, Warning, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings

from notify.checks import check_database, check_settings
from notify.conf import DEFAULTS


def notify_messages():
    """What ``manage.py check`` reports for notify (through Django's check registry)."""
    return [m for m in run_checks() if m.id and m.id.startswith("notify.")]


def ids(messages):
    return [m.id for m in messages]


def with_notify(settings, **changes):
    return override_settings(NOTIFY={**settings.NOTIFY, **changes})


def test_no_messages_for_the_test_settings():
    assert notify_messages() == []


def test_no_messages_for_the_defaults():
    with override_settings(NOTIFY=dict(DEFAULTS)):
        assert notify_messages() == []
    with override_settings(NOTIFY={}):
        assert notify_messages() == []


def test_no_messages_without_a_notify_setting(settings):
    del settings.NOTIFY
    assert check_settings() == []
    assert notify_messages() == []


@pytest.mark.parametrize("value", [[], "redis://x", None, 42, (("REDIS_URL", None),)])
def test_e001_notify_is_not_a_dict(value):
    with override_settings(NOTIFY=value):
        messages = check_settings()
        assert ids(messages) == ["notify.E001"]
        assert isinstance(messages[0], Error)
        assert messages[0].msg == f"NOTIFY must be a dict, not {type(value).__name__}."
        assert "notify.E001" in ids(notify_messages())


def test_w001_unknown_key(settings):
    with with_notify(settings, REDIS_ULR="redis://x", MAX_BUFER=3):
        messages = check_settings()
        assert ids(messages) == ["notify.W001", "notify.W001"]
        assert all(isinstance(m, Warning) for m in messages)
        assert messages[0].msg == "NOTIFY has an unknown key 'MAX_BUFER'; it is ignored."
        assert messages[1].msg == "NOTIFY has an unknown key 'REDIS_ULR'; it is ignored."
        assert "REDIS_URL" in messages[0].hint
        assert ids(notify_messages()) == ["notify.W001", "notify.W001"]


@pytest.mark.parametrize(
    "key",
    ["MAX_PAYLOAD_BYTES", "MAX_CHANNELS", "RETRY_MS", "MAX_BUFFER", "REPLAY_BATCH", "PRUNE_BATCH"],
)
@pytest.mark.parametrize("value", [0, -1, 1.5, 100.0, "100", None, True, False])
def test_e002_not_a_positive_integer(settings, key, value):
    with with_notify(settings, **{key: value}):
        messages = check_settings()
        assert ids(messages) == ["notify.E002"]
        assert messages[0].msg == f'NOTIFY["{key}"] must be a positive integer, not {value!r}.'
        assert ids(notify_messages()) == ["notify.E002"]


@pytest.mark.parametrize(
    "key",
    ["MAX_PAYLOAD_BYTES", "MAX_CHANNELS", "RETRY_MS", "MAX_BUFFER", "REPLAY_BATCH", "PRUNE_BATCH"],
)
@pytest.mark.parametrize("value", [1, 7, 10**6])
def test_e002_accepts_positive_integers(settings, key, value):
    with with_notify(settings, **{key: value}):
        assert check_settings() == []


@pytest.mark.parametrize(
    "key", ["HEARTBEAT_SECONDS", "POLL_SECONDS", "PRUNE_INTERVAL_SECONDS", "PRESENCE_SECONDS"]
)
@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, "1", None, True, float("nan"), float("inf")])
def test_e003_not_a_positive_number(settings, key, value):
    with with_notify(settings, **{key: value}):
        messages = check_settings()
        assert ids(messages) == ["notify.E003"]
        assert messages[0].msg == (
            f'NOTIFY["{key}"] must be a finite positive number, not {value!r}.'
        )
        assert ids(notify_messages()) == ["notify.E003"]


@pytest.mark.parametrize(
    "key", ["HEARTBEAT_SECONDS", "POLL_SECONDS", "PRUNE_INTERVAL_SECONDS", "PRESENCE_SECONDS"]
)
@pytest.mark.parametrize("value", [0.01, 1, 15.0])
def test_e003_accepts_positive_numbers(settings, key, value):
    with with_notify(settings, **{key: value}):
        assert check_settings() == []


@pytest.mark.parametrize("value", [-0.05, -1, "0.05", None, False, float("inf")])
def test_e003_gap_wait_must_not_be_negative(settings, value):
    with with_notify(settings, GAP_WAIT_SECONDS=value):
        messages = check_settings()
        assert ids(messages) == ["notify.E003"]
        assert messages[0].msg == (
            f'NOTIFY["GAP_WAIT_SECONDS"] must be a finite non-negative number, not {value!r}.'
        )


@pytest.mark.parametrize("value", [0, 0.0, 0.05, 1])
def test_e003_gap_wait_may_be_zero(settings, value):
    with with_notify(settings, GAP_WAIT_SECONDS=value):
        assert check_settings() == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "localhost", "postgres://x/y", 6379]
)
def test_e004_not_a_redis_url(settings, url):
    with with_notify(settings, REDIS_URL=url):
        messages = check_settings()
        assert ids(messages) == ["notify.E004"]
        assert messages[0].msg == f'NOTIFY["REDIS_URL"] {url!r} is not a Redis URL.'
        assert ids(notify_messages()) == ["notify.E004"]


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://user:secret@example.com:6380/1",
        "unix:///run/redis.sock",
        None,
        "",
    ],
)
def test_e004_accepts_redis_urls_and_none(settings, url):
    with with_notify(settings, REDIS_URL=url):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("notify.broker.missing.Broker", "cannot be imported"),
        ("notify.conf.DEFAULTS", "is not a notify.broker.base.Broker subclass"),
        ("notify.broker.base.Notice", "is not a notify.broker.base.Broker subclass"),
        (42, "is not a notify.broker.base.Broker subclass"),
    ],
)
def test_e006_broker_is_not_a_broker_class(settings, path, reason):
    with with_notify(settings, BROKER=path):
        messages = check_settings()
        assert ids(messages) == ["notify.E006"]
        assert reason in messages[0].msg


@pytest.mark.parametrize("path", [None, "notify.broker.local.LocalBroker"])
def test_e006_accepts_broker_classes(settings, path):
    with with_notify(settings, BROKER=path):
        assert check_settings() == []


@pytest.mark.parametrize("value", ["", None, 7])
def test_e007_redis_prefix_must_be_a_non_empty_string(settings, value):
    with with_notify(settings, REDIS_PREFIX=value):
        messages = check_settings()
        assert ids(messages) == ["notify.E007"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "must be a dict"),
        ([], "must be a dict"),
        ({"max_age": 60, "max_rows": 5}, "must be a dict"),
        ({"max_age": 0}, '["max_age"] must be a positive number of seconds or None'),
        ({"max_age": -5}, '["max_age"] must be a positive number'),
        ({"max_age": "7d"}, '["max_age"] must be a positive number'),
        ({"max_age": float("inf")}, '["max_age"] must be a positive number'),
        ({"max_age": True}, '["max_age"] must be a positive number'),
        ({"max_events": 0}, '["max_events"] must be a positive integer or None'),
        ({"max_events": 10.5}, '["max_events"] must be a positive integer'),
        ({"max_events": "100"}, '["max_events"] must be a positive integer'),
    ],
)
def test_e008_retention(settings, value, reason):
    with with_notify(settings, RETENTION=value):
        messages = check_settings()
        assert ids(messages) == ["notify.E008"]
        assert reason in messages[0].msg


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"max_age": None, "max_events": None},
        {"max_age": 3600},
        {"max_age": 0.5, "max_events": 1},
        {"max_events": 10**6},
    ],
)
def test_e008_accepts_retention_policies(settings, value):
    with with_notify(settings, RETENTION=value):
        assert check_settings() == []


@pytest.mark.parametrize("value", [None, "token-" * 8, [""], [None], ["a" * 40, 7], {"a": 1}])
def test_e009_publish_tokens_must_be_a_list_of_strings(settings, value):
    with with_notify(settings, PUBLISH_TOKENS=value):
        messages = check_settings()
        assert ids(messages) == ["notify.E009"]


def test_w003_short_publish_tokens(settings):
    with with_notify(settings, PUBLISH_TOKENS=["a" * 40, "secret"]):
        messages = check_settings()
        assert ids(messages) == ["notify.W003"]
        assert "1 token(s) shorter than 32" in messages[0].msg
    with with_notify(settings, PUBLISH_TOKENS=("a" * 32, "b" * 64)):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("", "an empty string"),
        (["a-secret-token"], "a value of type list"),
        (b"a-secret-token", "a value of type bytes"),
        (42, "a value of type int"),
    ],
)
def test_e015_metrics_token_must_be_none_or_a_non_empty_string(settings, value, shown):
    with with_notify(settings, METRICS_TOKEN=value):
        messages = check_settings()
        assert ids(messages) == ["notify.E015"]
        assert messages[0].msg == (
            f'NOTIFY["METRICS_TOKEN"] must be None or a non-empty string, not {shown}.'
        )
        # A secret in the wrong shape is not printed by manage.py check.
        assert "a-secret-token" not in messages[0].msg + messages[0].hint
        assert ids(notify_messages()) == ["notify.E015"]


@pytest.mark.parametrize("value", [None, "t", "a-long-random-token"])
def test_no_message_for_a_metrics_token_that_is_none_or_a_string(settings, value):
    with with_notify(settings, METRICS_TOKEN=value):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("tests.nowhere.policy", "cannot be imported"),
        ("notify.conf.DEFAULTS", "is not a callable"),
        (42, "is not a callable"),
    ],
)
def test_e010_authorize_is_not_a_callable(settings, path, reason):
    with with_notify(settings, AUTHORIZE=path):
        messages = check_settings()
        assert ids(messages) == ["notify.E010"]
        assert reason in messages[0].msg


def test_e010_accepts_a_policy_function(settings):
    with with_notify(settings, AUTHORIZE="notify.authorization.allow_all"):
        assert check_settings() == []


def test_e005_use_tz_false():
    with override_settings(USE_TZ=False):
        messages = check_settings()
        assert ids(messages) == ["notify.E005"]
        assert "USE_TZ = True" in messages[0].msg
        assert "notify.E005" in ids(notify_messages())


def test_w002_database_without_ordered_commits(monkeypatch):
    assert check_database() == []
    # No MySQL here to run: pretend the default database is one.
    monkeypatch.setattr(connection, "vendor", "mysql")
    messages = check_database()
    assert ids(messages) == ["notify.W002"]
    assert isinstance(messages[0], Warning)
    assert messages[0].msg == (
        "notify keeps events in commit order only on PostgreSQL and SQLite; "
        "database 'default' is mysql."
    )
    assert ids(notify_messages()) == ["notify.W002"]


def test_several_problems_are_reported_together(settings):
    with (
        with_notify(settings, MAX_BUFFER=0, POLL_SECONDS=-1, REDIS_URL="http://x", NOPE=1),
        override_settings(USE_TZ=False),
    ):
        assert sorted(ids(check_settings())) == [
            "notify.E002",
            "notify.E003",
            "notify.E004",
            "notify.E005",
            "notify.W001",
        ]


def test_manage_py_check_fails_on_errors(settings):
    out = io.StringIO()
    call_command("check", stdout=out, stderr=io.StringIO())
    assert "no issues" in out.getvalue()
    with with_notify(settings, RETRY_MS=0), pytest.raises(SystemCheckError, match=r"notify\.E002"):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())


def test_cors_origins_pass(settings):
    origins = ["https://app.example.com", "http://127.0.0.1:8001", "http://[::1]:3000"]
    with with_notify(settings, CORS_ALLOWED_ORIGINS=origins):
        assert check_settings() == []
    with with_notify(settings, CORS_ALLOWED_ORIGINS=["*"], CORS_ALLOW_CREDENTIALS=False):
        assert check_settings() == []


def test_e011_any_origin_with_credentials(settings):
    with with_notify(settings, CORS_ALLOWED_ORIGINS=["*"]):
        messages = check_settings()
        assert ids(messages) == ["notify.E011"]
        assert isinstance(messages[0], Error)
        assert "CORS_ALLOW_CREDENTIALS" in messages[0].msg
        assert "notify.E011" in ids(notify_messages())


@pytest.mark.parametrize(
    "origin",
    [
        "app.example.com",
        "https://app.example.com/",
        "https://app.example.com/path",
        "https://app.example.com?x=1",
        "https://App.Example.com",
        "ftp://example.com",
        "https://user@example.com",
        "https://example.com:99999",
        "https://",
        "null",
        "https://caf\u00e9.example",
    ],
)
def test_e012_malformed_origin(settings, origin):
    with with_notify(settings, CORS_ALLOWED_ORIGINS=["https://ok.example", origin]):
        messages = check_settings()
        assert ids(messages) == ["notify.E012"]
        assert repr(origin) in messages[0].msg


@pytest.mark.parametrize("value", ["https://app.example.com", None, [1]])
def test_e012_origins_not_a_list_of_strings(settings, value):
    with with_notify(settings, CORS_ALLOWED_ORIGINS=value):
        assert ids(check_settings()) == ["notify.E012"]


@pytest.mark.parametrize("key", ["MAX_STREAMS_PER_USER", "MAX_STREAMS_PER_IP"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "20", True])
def test_e013_stream_limit_not_a_positive_integer_or_none(settings, key, value):
    with with_notify(settings, **{key: value}):
        messages = check_settings()
        assert ids(messages) == ["notify.E013"]
        assert messages[0].msg == (
            f'NOTIFY["{key}"] must be a positive integer or None, not {value!r}.'
        )
        assert ids(notify_messages()) == ["notify.E013"]


@pytest.mark.parametrize("key", ["MAX_STREAMS_PER_USER", "MAX_STREAMS_PER_IP"])
def test_stream_limits_may_be_none(settings, key):
    with with_notify(settings, **{key: None}):
        assert check_settings() == []


@pytest.mark.parametrize("value", [0, -5, float("inf"), float("nan"), "3600", True])
def test_e014_max_stream_seconds_not_a_positive_number_or_none(settings, value):
    with with_notify(settings, MAX_STREAM_SECONDS=value):
        messages = check_settings()
        assert ids(messages) == ["notify.E014"]
        assert messages[0].msg == (
            f'NOTIFY["MAX_STREAM_SECONDS"] must be a positive number or None, not {value!r}.'
        )


@pytest.mark.parametrize("value", [None, 15, 600.5])
def test_max_stream_seconds_accepted(settings, value):
    with with_notify(settings, MAX_STREAM_SECONDS=value):
        assert check_settings() == []


def test_w004_max_stream_seconds_below_the_heartbeat(settings):
    with with_notify(settings, MAX_STREAM_SECONDS=10, HEARTBEAT_SECONDS=15):
        messages = check_settings()
        assert ids(messages) == ["notify.W004"]
        assert isinstance(messages[0], Warning)
        assert "shorter than" in messages[0].msg
        assert ids(notify_messages()) == ["notify.W004"]

"""Scrubbing is pure: every place a secret can hide in an event, and what must survive."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.event import AccountIn, EventIn, ExceptionIn, Frame, UserIn
from app.domain.scrubbing import (
    FILTERED,
    ScrubRules,
    looks_like_card,
    luhn_valid,
    scrub_data,
    scrub_event,
    scrub_text,
)

DEFAULT = ScrubRules()
SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "Password",
        "user_password",
        "passwd",
        "client_secret",
        "access_token",
        "X-Auth-Token",
        "api_key",
        "apiKey",
        "X-Api-Key",
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
        "cookies",
        "sessionid",
        "session",
        "csrftoken",
        "X-CSRF-Token",
        "X-XSRF-TOKEN",
        "credentials",
        "private_key",
        "credit_card",
        "card_number",
        "auth",
        "pwd",
    ],
)
def test_keys_that_name_secrets(key):
    assert DEFAULT.is_secret_key(key)
    assert scrub_data({key: SECRET}, DEFAULT) == {key: FILTERED}


@pytest.mark.parametrize("key", ["username", "email", "author", "status", "id", "passage", "key"])
def test_keys_that_do_not(key):
    assert not DEFAULT.is_secret_key(key)
    assert scrub_data({key: "kept"}, DEFAULT) == {key: "kept"}


def test_a_secret_key_hides_whatever_it_holds():
    data = {"password": {"old": SECRET, "new": [SECRET]}, "token": 12345, "secret": None}
    assert scrub_data(data, DEFAULT) == {
        "password": FILTERED,
        "token": FILTERED,
        "secret": FILTERED,
    }


def test_a_session_object_is_walked_but_a_session_id_hidden():
    data = {"session": {"basketId": "123", "csrf_token": SECRET}, "session_id": SECRET}
    assert scrub_data(data, DEFAULT) == {
        "session": {"basketId": "123", "csrf_token": FILTERED},
        "session_id": FILTERED,
    }


def test_nested_lists_and_header_pairs():
    data = {
        "headers": [["Cookie", f"sid={SECRET}"], ["Accept", "text/html"]],
        "items": [{"api_key": SECRET}, "plain", 3],
    }
    assert scrub_data(data, DEFAULT) == {
        "headers": [["Cookie", FILTERED], ["Accept", "text/html"]],
        "items": [{"api_key": FILTERED}, "plain", 3],
    }


def test_project_fields_add_to_the_defaults():
    rules = ScrubRules.for_project(["Employee-Number", " ssn2 ", ""], False)
    assert rules.extra_keys == ("employeenumber", "ssn2")
    data = {"employee_number": "E-1", "ssn2": "078-05-1120", "team": "blue"}
    assert scrub_data(data, rules) == {
        "employee_number": FILTERED,
        "ssn2": FILTERED,
        "team": "blue",
    }
    assert (
        scrub_text("employeeNumber=E-1 team=blue", rules) == f"employeeNumber={FILTERED} team=blue"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://shop.test/reset?token=abc123&lang=en",
            f"https://shop.test/reset?token={FILTERED}&lang=en",
        ),
        ("login failed: password=hunter2 user=bob", f"login failed: password={FILTERED} user=bob"),
        (
            "sessionid=abc; csrftoken=def; theme=dark",
            f"sessionid={FILTERED}; csrftoken={FILTERED}; theme=dark",
        ),
        ('{"password": "hunter2", "n": 1}', f'{{"password": "{FILTERED}", "n": 1}}'),
        ("{'api_key': 'abc123'}", f"{{'api_key': '{FILTERED}'}}"),
        ('API_KEY = "abc123"', f'API_KEY = "{FILTERED}"'),
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: {FILTERED}"),
        ("sent Bearer eyJhbGciOi.abc-def_1", f"sent Bearer {FILTERED}"),
        ("connect postgres://app:s3cret@db:5432/x", f"connect postgres://app:{FILTERED}@db:5432/x"),
        ("pay with 4111 1111 1111 1111 now", f"pay with {FILTERED} now"),
        ("pay with 4111-1111-1111-1111.", f"pay with {FILTERED}."),
        ("order 12 5500005555555559 done", f"order 12 {FILTERED} done"),
        ("amex 378282246310005", f"amex {FILTERED}"),
        ("leaked sk_0123456789abcdef0123456789abcdef", f"leaked {FILTERED}"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
            f"jwt {FILTERED}",
        ),
        ("aws AKIAIOSFODNN7EXAMPLE used", f"aws {FILTERED} used"),
    ],
)
def test_secrets_in_text(text, expected):
    assert scrub_text(text, DEFAULT) == expected


@pytest.mark.parametrize(
    "text",
    [
        "took 1710000000000 ms",  # a millisecond timestamp: no card issuer's prefix
        "4111 1111 1111 1112",  # fails the Luhn check
        "id 550e8400-e29b-41d4-a716-446655440000",
        "at 10:30 the job ran",
        "ValueError: invalid literal for int() with base 10: 'abc'",
        "KeyError: 'password'",
        "Timeout: 30s",
        "call 192.168.0.12:8080/health",
    ],
)
def test_what_is_not_a_secret_survives(text):
    assert scrub_text(text, DEFAULT) == text


def test_luhn_and_card_shape():
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert looks_like_card("6011111111111117")
    assert not looks_like_card("1111111111111117")  # no issuer starts with 1
    assert not looks_like_card("411111111111")  # too short
    assert scrub_data({"n": 4111111111111111, "m": 1710000000000, "ok": True}, DEFAULT) == {
        "n": FILTERED,
        "m": 1710000000000,
        "ok": True,
    }


def test_scrubbing_twice_changes_nothing_more():
    once = scrub_text("password=x Bearer abc 4111111111111111", DEFAULT)
    assert scrub_text(once, DEFAULT) == once


def test_data_deeper_than_the_limit_is_filtered_whole():
    deep: dict = {"leaf": SECRET}
    for _ in range(150):
        deep = {"next": deep}
    assert SECRET not in repr(scrub_data(deep, DEFAULT))


# Keys and texts drawn from what the rules look for and what they must leave alone, so that
# generated data is often dirty in exactly one place.
_KEYS = st.sampled_from(
    ["password", "Api-Key", "session", "pin", "shipping", "name", "order", "p.i.n", "", "id"]
)
_TEXTS = st.sampled_from(
    [
        "plain",
        "",
        FILTERED,
        "pin=1234",
        "shipping=4",
        "see https://u:pw@host/x",
        "Bearer abc.def",
        "card 4111 1111 1111 1111",
        "ts 1710000000000",
        "sk_" + "0" * 32,
        "x" * 300,
        "token " * 60,
    ]
)
_SCALARS = _TEXTS | st.integers() | st.sampled_from([4111111111111111, -4111111111111111])
_SCALARS |= st.floats(allow_nan=False) | st.booleans() | st.none()
_DATA = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_KEYS, inner, max_size=4)
        | st.lists(st.tuples(_KEYS, inner).map(list), min_size=1, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_DATA)
def test_data_is_scrubbed_as_the_copying_walk_scrubs_it(value):
    """`scrub_data` reads first and copies only what has something to filter: what it
    returns is what the copying walk makes, and `value` itself when that equals it."""
    from app.domain.scrubbing import _scrub_data

    copied = _scrub_data(value, DEFAULT, 0)
    scrubbed = scrub_data(value, DEFAULT)
    assert scrubbed == copied
    if copied == value:
        assert scrubbed is value


def test_values_an_sdk_filtered_already_are_not_copied():
    value = {"session": FILTERED, "password": FILTERED, "headers": [["Cookie", FILTERED]]}
    assert scrub_data(value, DEFAULT) is value
    frame = Frame(function="f", vars=value, pre_context=["x = 1"])
    assert (
        scrub_event(EventIn(exceptions=[ExceptionIn(frames=[frame])]), DEFAULT)
        .exceptions[0]
        .frames[0]
        is frame
    )


def full_event() -> EventIn:
    """A secret in every place an event carries free-form text or data."""
    return EventIn(
        message=f"charging failed for password={SECRET}",
        exceptions=[
            ExceptionIn(
                type="AuthError",
                value=f"bad header Authorization: Bearer {SECRET}",
                mechanism={"type": "generic", "data": {"api_key": SECRET}},
                frames=[
                    Frame(
                        function="charge",
                        filename="pay.py",
                        vars={"card": "4111111111111111", "password": SECRET, "amount": 12},
                        context_line=f'    token = "{SECRET}"',
                        pre_context=[f"secret={SECRET}"],
                        post_context=[f"cookie: {SECRET}"],
                    )
                ],
            )
        ],
        raw_stacktrace=f'File "pay.py", line 3, in charge\n  api_key="{SECRET}"',
        url=f"https://shop.test/pay?session_token={SECRET}&step=2",
        transaction=f"/pay?token={SECRET}",
        request={
            "url": f"https://shop.test/pay?token={SECRET}",
            "method": "POST",
            "headers": {"Authorization": f"Bearer {SECRET}", "X-Forwarded-For": "203.0.113.9"},
            "cookies": {"sessionid": SECRET},
            "query_string": f"a=1&api_key={SECRET}",
            "data": {"card_number": "4111 1111 1111 1111", "note": f"pw: Bearer {SECRET}"},
            "env": {"REMOTE_ADDR": "203.0.113.9", "SERVER_NAME": "web-1"},
        },
        user=UserIn(
            id="u-1",
            email="ada@example.com",
            ip_address="203.0.113.9",
            data={"password": SECRET, "plan": "pro"},
        ),
        account=AccountIn(id="acme", data={"stripe_secret": SECRET}),
        breadcrumbs=[
            {
                "category": "http",
                "message": f"GET /login?password={SECRET}",
                "data": {"token": SECRET},
            },
            {"category": "ui", "message": "clicked pay"},
        ],
        tags={"session_token": SECRET, "browser": "Firefox", "note": f"token={SECRET}"},
        extra={"config": {"db_password": SECRET, "host": "db"}, "card": 4111111111111111},
        contexts={"app": {"secret_key": SECRET, "name": "shop"}},
        client_ip="203.0.113.9",
    )


def test_every_place_of_an_event_is_scrubbed():
    event = full_event()
    scrubbed = scrub_event(event, DEFAULT)
    dumped = scrubbed.model_dump_json()
    assert SECRET not in dumped
    assert "4111" not in dumped
    # What is not secret is kept, the client address too unless the project drops it.
    assert scrubbed.request["headers"]["X-Forwarded-For"] == "203.0.113.9"
    assert scrubbed.client_ip == "203.0.113.9"
    assert scrubbed.user is not None and scrubbed.user.ip_address == "203.0.113.9"
    assert scrubbed.user.data == {"password": FILTERED, "plan": "pro"}
    assert scrubbed.tags == {
        "session_token": FILTERED,
        "browser": "Firefox",
        "note": f"token={FILTERED}",
    }
    assert scrubbed.extra["config"] == {"db_password": FILTERED, "host": "db"}
    assert scrubbed.contexts["app"] == {"secret_key": FILTERED, "name": "shop"}
    assert scrubbed.breadcrumbs[1] == {"category": "ui", "message": "clicked pay"}
    frame = scrubbed.exceptions[0].frames[0]
    assert frame.vars == {"card": FILTERED, "password": FILTERED, "amount": 12}
    assert scrubbed.exceptions[0].type == "AuthError"
    # The input is left alone (a dialect may still hold it).
    assert SECRET in event.model_dump_json()


def test_dropping_ip_addresses():
    rules = ScrubRules.for_project(None, True)
    scrubbed = scrub_event(full_event(), rules)
    dumped = scrubbed.model_dump_json()
    assert "203.0.113.9" not in dumped
    assert scrubbed.client_ip is None
    assert scrubbed.user is not None and scrubbed.user.ip_address is None
    assert scrubbed.user.id == "u-1"
    assert scrubbed.request["env"] == {"SERVER_NAME": "web-1"}
    assert "X-Forwarded-For" not in scrubbed.request["headers"]


@pytest.mark.parametrize(
    "user",
    [UserIn(ip_address="198.51.100.7"), UserIn(id="198.51.100.7", ip_address="198.51.100.7")],
)
def test_a_user_known_only_by_address_goes_with_it(user):
    event = EventIn(message="m", user=user)
    assert scrub_event(event, ScrubRules(drop_ip_addresses=True)).user is None
    assert scrub_event(event, DEFAULT).user == event.user


def test_header_pairs_lose_addresses_too():
    event = EventIn(
        message="m",
        request={"headers": [["X-Real-IP", "198.51.100.7"], ["Accept", "*/*"]]},
    )
    scrubbed = scrub_event(event, ScrubRules(drop_ip_addresses=True))
    assert scrubbed.request == {"headers": [["Accept", "*/*"]]}


def test_a_long_transaction_stays_within_its_column():
    event = EventIn(message="m", transaction="/x?" + "&".join(f"token={i}" for i in range(100)))
    assert len(event.transaction or "") <= 512
    assert len(scrub_event(event, DEFAULT).transaction or "") <= 512

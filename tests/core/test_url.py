"""URL parsing and redaction (``polyq.url``): passwords typed as is, with ``@``,
``#``, ``/`` or ``?`` in them, are read whole and hidden whole; secret query
parameters and DSN ``key=value`` pairs are hidden in any text (issue 17)."""

from __future__ import annotations

import logging
import time

import pytest

import polyq.url as polyq_url
from polyq.exceptions import ConfigurationError
from polyq.url import redact

# Passwords as users type them; every piece must vanish from redacted text.
PASSWORDS = [
    ("s3@retpw", ["s3", "retpw"]),
    ("s3cret#frag", ["s3cret", "frag"]),
    ("s3cret/slash", ["s3cret", "slash"]),
    ("s3cret?quest", ["s3cret", "quest"]),
    ("p@ss/w#rd?x@y", ["p@ss", "w#rd", "rd?x", "ss/w"]),
    ("Ab+c/d=e=", ["Ab+c", "d=e"]),  # base64-like (AWS secret keys)
    ("s3cret?x=1", ["s3cret"]),
    ("p@s:w;rd", ["p@s", "w;rd"]),
]
TEMPLATES = [
    "redis://:{pw}@cache.example.com:6379/0",
    "redis://app:{pw}@cache.example.com:6379/0",
    "rediss://default:{pw}@cache.example.com:6380/1?ssl_cert_reqs=required",
    "redis+sentinel://:{pw}@s1.example.com:26379,s2.example.com/3?master_name=m",
    "postgresql://app:{pw}@db.example.com:5432/jobs?sslmode=verify-full",
    "mysql+pymysql://app:{pw}@db.example.com/jobs",
    "amqp://app:{pw}@mq.example.com:5672/vhost",
    "amqps://app:{pw}@[2001:db8::1]:5671//",
    "sqs://AKIAEXAMPLE:{pw}@?region=eu-west-1",
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize(("password", "pieces"), PASSWORDS)
def test_redact_hides_the_whole_password(template: str, password: str, pieces: list[str]) -> None:
    url = template.format(pw=password)
    host = template.split("{pw}@", 1)[1].split("/", 1)[0].split("?", 1)[0]
    for text in (url, f"cannot connect to {url!r}: refused", f"broker={url} (x)", f"<{url}>"):
        shown = redact(text)
        for piece in pieces:
            assert piece not in shown, (text, shown)
        assert "***" in shown
        assert host in shown, shown  # where it points stays readable


@pytest.mark.parametrize(
    "key",
    [
        "password", "ssl_password", "sslpassword", "ssl_keyfile_password", "passwd",
        "secret", "client_secret", "token", "sas_token", "aws_secret_access_key",
        "aws_session_token", "api_key", "SSLPassword", "Password", "AWS_SECRET_ACCESS_KEY",
    ],
)  # fmt: skip
def test_secret_query_parameters_are_hidden_in_full(key: str) -> None:
    value = "v4lue-with/slash+plus@at#hash"
    url = f"postgresql://db.example.com/jobs?sslmode=require&{key}={value}&application_name=me"
    shown = redact(url)
    assert "v4lue" not in shown and "slash" not in shown and "hash" not in shown, shown
    assert f"{key}=***" in shown
    assert "sslmode=require" in shown and "application_name=me" in shown


def test_dsn_and_repr_forms_are_hidden() -> None:
    text = (
        "connection failed: host=db.example.com port=5432 user=app password=s3cret dbname=jobs "
        "sslpassword='key pass phrase' sslmode=verify-full\n"
        "  kwargs={'host': 'h', 'password': 'hunter2'} json={\"token\": \"tok-123\"} "
        'PASSWORD = "quoted secret"'
    )
    shown = redact(text)
    for secret in ("s3cret", "key pass phrase", "phrase", "hunter2", "tok-123", "quoted secret"):
        assert secret not in shown, shown
    for kept in ("host=db.example.com", "user=app", "dbname=jobs", "sslmode=verify-full"):
        assert kept in shown
    assert "sslpassword='***'" in shown and "'password': '***'" in shown


def test_redis_password_only_spelling_and_tokens_in_user_info_are_hidden() -> None:
    assert redact("redis://s3cret@cache:6379/0") == "redis://***@cache:6379/0"
    assert redact("https://ghp_t0ken@github.com/o/r.git") == "https://***@github.com/o/r.git"
    # A user name alone is not a secret elsewhere: kept, it names who failed to log in.
    assert redact("postgresql://postgres@db/jobs") == "postgresql://postgres@db/jobs"


def test_redaction_keeps_what_is_not_secret() -> None:
    for url in (
        "redis://cache:6379/0?client_name=me@example.com",
        "sqlite:////srv/me@corp/polyq.sqlite3",
        "sqs://?region=eu-west-1&queue_name_prefix=app-",
        "amqp://guest@mq//",
        "if password == expected: pass",
    ):
        assert redact(url) == url
    assert redact(redact("redis://:a@b@h/0")) == "redis://:***@h/0"


def test_several_urls_in_one_text() -> None:
    shown = redact("amqp://u:p1@n1//;amqp://u:p2@n2// and redis://:p3@h/0, https://x:p4@h/")
    assert not any(f"p{i}" in shown for i in (1, 2, 3, 4)), shown
    assert shown.count("***") == 4


def test_a_password_with_an_unencoded_character_does_not_leak_from_a_port_error() -> None:
    # Old code: "bad port 's3cret' in Redis URL ..." (the password's head taken for a port).
    for url in ("redis://:s3cret#tail@cache:6379/0", "redis://:s3cret/tail@cache:6379/0"):
        parts = polyq_url.split_url(url)
        assert parts.password == url.split("@")[0].split("//:")[1]
        assert (parts.hostname, parts.port, parts.path) == ("cache", 6379, "/0")
    with pytest.raises(ConfigurationError) as info:
        polyq_url.split_url("redis://:s3cret@cache:notaport/0")
    assert "s3cret" not in str(info.value) and "host and port" in str(info.value)


@pytest.mark.parametrize(
    ("url", "user", "password", "netloc", "path", "query"),
    [
        ("redis://:s3@retpw@h:6379/0", "", "s3@retpw", "h:6379", "/0", ""),
        ("redis://u:a/b?c#d@h/1?db=2", "u", "a/b?c#d", "h", "/1", "db=2"),
        ("redis://:s3cret?x=1@h/0", "", "s3cret?x=1", "h", "/0", ""),
        ("redis://:pw@h/0?client_name=a@b", "", "pw", "h", "/0", "client_name=a@b"),
        ("postgresql://u:p%40ss@h:5432/db?sslmode=require", "u", "p@ss", "h:5432", "/db",
         "sslmode=require"),
        ("sqlite:////srv/a@b/polyq.sqlite3", None, None, "", "//srv/a@b/polyq.sqlite3", ""),
        ("sqs://KEY:Ab+c/d=@?region=x", "KEY", "Ab+c/d=", "", "", "region=x"),
        ("sqs://?region=x&prefix=a@b", None, None, "", "", "region=x&prefix=a@b"),
        ("dynamodb://@localhost:8000/results", "", None, "localhost:8000", "/results", ""),
        ("redis+sentinel://:p@w@s1:26379,[::1]:7000/3", "", "p@w", "s1:26379,[::1]:7000", "/3", ""),
        ("amqp://guest:guest@mq//", "guest", "guest", "mq", "//", ""),
        ("memory://name", None, None, "name", "", ""),
    ],
)  # fmt: skip
def test_split_url(
    url: str, user: str | None, password: str | None, netloc: str, path: str, query: str
) -> None:
    parts = polyq_url.split_url(url)
    assert (parts.username, parts.password, parts.netloc, parts.path, parts.query) == (
        user,
        password,
        netloc,
        path,
        query,
    )


def test_geturl_encodes_the_user_info_for_strict_parsers() -> None:
    parts = polyq_url.split_url("postgresql://app:p@ss/w#rd?@db:5432/jobs?sslmode=require")
    assert parts.geturl() == "postgresql://app:p%40ss%2Fw%23rd%3F@db:5432/jobs?sslmode=require"
    assert parts.hosts == [("db", 5432)]
    assert polyq_url.split_url("rediss://[::1]:7000/0").hosts == [("::1", 7000)]


def test_query_options_read_past_a_password_with_a_question_mark() -> None:
    assert polyq_url.query_options("redis://:pa?ss@h/0?socket_timeout=3&x=true") == {
        "socket_timeout": 3,
        "x": True,
    }
    # Celery's lists: a ";" separates only before another URL.
    assert polyq_url.url_list("sentinel://:p;w@h1;sentinel://:p;w@h2/0") == [
        "sentinel://:p;w@h1",
        "sentinel://:p;w@h2/0",
    ]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True), ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True),
        ("[::1]", True), ("", True), (None, True), ("/var/run/postgresql", True),
        ("db.example.com", False), ("10.0.0.5", False), ("2001:db8::1", False),
    ],
)  # fmt: skip
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert polyq_url.is_loopback(host) is loopback


def test_warn_insecure_logs_once_per_url_and_problem(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("polyq.test")
    url = "rediss://:s3cret@once.example.com/0"
    with caplog.at_level(logging.WARNING, logger="polyq.test"):
        assert polyq_url.warn_insecure(log, url, "no verification", "Verify.")
        assert not polyq_url.warn_insecure(log, url, "no verification", "Verify.")
    assert caplog.text.count("no verification") == 1
    assert "s3cret" not in caplog.text and "once.example.com" in caplog.text


def test_redact_is_cheap_on_log_lines_without_secrets() -> None:
    line = "[2026-01-01 00:00:00: INFO/MainProcess] Task proj.add[1234-5678] succeeded in 0.001s: 5"
    start = time.perf_counter()
    for _ in range(10_000):
        redact(line)
    assert time.perf_counter() - start < 0.5  # 50 µs a line at most, on a slow machine


def test_text_whose_lower_case_is_longer_is_redacted_too() -> None:
    # "İ".lower() is two characters: the case-blind search takes over.
    assert redact("İstanbul PASSWORD=s3cret host=db") == "İstanbul PASSWORD=*** host=db"
    assert redact("İ redis://:s3cret@h/0") == "İ redis://:***@h/0"

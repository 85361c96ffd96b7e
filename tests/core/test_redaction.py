"""Secrets never leave a worker in clear (issue 17): a failing task's message and
traceback, which often quote a DSN, are stored redacted (``result_redact_secrets``),
and so are the worker's log lines, dead-letter reasons, its banner and ``inspect
stats`` (the fields of its heartbeat events) and ``polyq call``'s output."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from polyq import Polyq
from polyq.result import meta_key
from polyq.testing.worker import start_worker
from polyq.worker import remote

SECRETS = ("s3cret-pw", "tail@pw", "dsn-pass", "tok-123", "quoted pass")
FAILURE = (
    "could not connect to postgresql://app:s3cret-pw@db.example.com:5432/jobs, nor to "
    "redis://:x@tail@pw@cache:6379/0 (dsn: host=db.example.com password=dsn-pass "
    "sslpassword='quoted pass' dbname=jobs) with ?token=tok-123"
)


def _app(tmp_path: Path, **conf: Any) -> Polyq:
    url = f"sqlite:///{tmp_path}/polyq.sqlite3"
    return Polyq("secrets", broker=url, backend=url, **conf)


def _assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, (secret, text)


@pytest.mark.sqlite
def test_a_failure_quoting_a_dsn_is_stored_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(tmp_path)

    @app.task
    def connect() -> None:
        dsn = FAILURE
        raise RuntimeError(dsn)

    with caplog.at_level(logging.INFO, logger="polyq.worker"), start_worker(app, pool="solo"):
        res = connect.delay()
        error = res.get(timeout=20, propagate=False)
    raw = app.backend.get(meta_key(res.id))
    assert raw is not None
    _assert_clean(raw.decode())
    _assert_clean(str(error))
    _assert_clean(res.traceback or "")
    assert "Traceback" in (res.traceback or "")
    # What is not secret is kept, so the failure can still be understood.
    assert "db.example.com:5432/jobs" in str(error) and "password=***" in str(error)
    assert "RuntimeError" in caplog.text
    _assert_clean(caplog.text)  # the worker's "Task ... raised" line, whatever the formatter


@pytest.mark.sqlite
def test_the_dead_letter_reason_is_redacted(tmp_path: Path) -> None:
    app = _app(tmp_path, task_acks_on_failure_or_timeout=False)

    @app.task
    def connect() -> None:
        raise RuntimeError(FAILURE)

    with start_worker(app, pool="solo"):
        connect.delay().get(timeout=20, propagate=False)
    (letter,) = app.transport.dead_letters(app.conf.task_default_queue)
    assert "RuntimeError" in letter.reason
    _assert_clean(letter.reason)


@pytest.mark.sqlite
def test_result_redact_secrets_off_stores_the_raw_text(tmp_path: Path) -> None:
    app = _app(tmp_path, result_redact_secrets=False)

    @app.task
    def connect() -> None:
        raise RuntimeError(FAILURE)

    with start_worker(app, pool="solo"):
        res = connect.delay()
        res.get(timeout=20, propagate=False)
    assert "s3cret-pw" in (res.traceback or "")


@pytest.mark.memory
def test_banner_and_inspect_stats_hide_a_password_with_an_at_sign(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = uuid.uuid4().hex[:8]
    app = Polyq("s", broker=f"memory://:s3cret@tail@pw@{name}", backend=f"memory://{name}")
    with caplog.at_level(logging.INFO, logger="polyq.worker"), start_worker(app) as worker:
        broker = remote.stats(worker)["broker"]  # also every worker-heartbeat event's field
    assert name in broker
    _assert_clean(broker)
    assert "ready" in caplog.text
    _assert_clean(caplog.text)


@pytest.mark.memory
def test_polyq_call_prints_the_urls_redacted() -> None:
    from polyq.cli import main

    name = uuid.uuid4().hex[:8]
    url = f"memory://:s3cret@tail@pw@{name}?token=tok-123"
    result = CliRunner().invoke(main, ["-b", url, "--result-backend", url, "call", "some.task"])
    assert result.exit_code == 0, result.output
    assert name in result.output
    _assert_clean(result.output)

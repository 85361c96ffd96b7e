"""The app and task API: configuration, routing, calling, retries, hooks, signals, results."""

from __future__ import annotations

import datetime
import time
import types
import uuid
from typing import Any

import pytest

from polyq import Polyq, Task, signals, states
from polyq.exceptions import (
    ConfigurationError,
    Ignore,
    Reject,
    TaskError,
)
from polyq.testing.worker import start_worker


def make_app(**conf: Any) -> Polyq:
    name = f"memory://{uuid.uuid4().hex}"
    return Polyq("t", broker=name, backend=name, **conf)


# -- configuration -------------------------------------------------------------------


def test_defaults_to_sqlite_in_the_working_directory(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POLYQ_BROKER_URL", raising=False)
    monkeypatch.delenv("POLYQ_RESULT_BACKEND", raising=False)
    app = Polyq()
    assert app.broker_url == f"sqlite:///{tmp_path}/polyq.sqlite3"
    assert app.backend_url == app.broker_url


def test_environment_variables(monkeypatch: Any) -> None:
    monkeypatch.setenv("POLYQ_BROKER_URL", "memory://from-env")
    monkeypatch.setenv("POLYQ_WORKER_PREFETCH_MULTIPLIER", "7")
    monkeypatch.setenv("POLYQ_ACCEPT_CONTENT", '["json", "msgpack"]')
    app = Polyq()
    assert app.broker_url == "memory://from-env"
    assert app.conf.worker_prefetch_multiplier == 7
    assert app.conf.accept_content == ["json", "msgpack"]
    app.conf.worker_prefetch_multiplier = 2  # set in code wins
    assert app.conf.worker_prefetch_multiplier == 2


def test_settings_read_as_attributes_follow_every_write() -> None:
    app = Polyq("t", broker="memory://")
    assert app.conf.task_default_queue == "celery"
    app.conf.task_default_queue = "a"
    assert app.conf.task_default_queue == "a"
    app.conf["task_default_queue"] = "b"
    assert app.conf.task_default_queue == "b"
    app.conf.update(task_default_queue="c")
    assert app.conf.task_default_queue == app.conf["task_default_queue"] == "c"
    del app.conf["task_default_queue"]
    assert app.conf.task_default_queue == "celery"
    app.config_from_object({"task_default_queue": "d"})
    assert app.conf.task_default_queue == "d"


def test_config_from_object_with_namespace() -> None:
    settings = types.SimpleNamespace(
        CELERY_BROKER_URL="memory://django",
        CELERY_TASK_DEFAULT_QUEUE="web",
        DEBUG=True,
    )
    app = make_app()
    app.config_from_object(settings, namespace="CELERY")
    assert app.conf.broker_url == "memory://django"
    assert app.conf.task_default_queue == "web"


def test_config_from_module_name(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "myconfig.py").write_text("task_default_priority = 5\nresult_expires = 60\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app()
    app.config_from_object("myconfig")
    assert app.conf.task_default_priority == 5
    assert app.result_ttl == 60.0


def test_unknown_setting_warns_with_a_hint() -> None:
    app = make_app()
    with pytest.warns(UserWarning, match="broker_pool_limit"):
        app.conf.broker_pool_limit = 10


def test_autodiscover_tasks(tmp_path: Any, monkeypatch: Any) -> None:
    pkg = tmp_path / "shop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(
        "from polyq import shared_task\n\n@shared_task\ndef ship(order):\n    return order\n"
    )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app()
    app.autodiscover_tasks(["shop", "empty"])
    assert "shop.tasks.ship" in app.tasks


# -- calling -------------------------------------------------------------------------


def test_routing_by_pattern_and_explicit_queue() -> None:
    app = make_app(task_routes={"feeds.*": {"queue": "feeds"}, "mail.send": "mail"})
    sent = []
    app.publish_raw = lambda messages, **kw: sent.extend(messages)  # type: ignore[method-assign]
    app.send_task("feeds.fetch")
    app.send_task("mail.send")
    app.send_task("other.thing")
    app.send_task("feeds.fetch", queue="urgent")
    assert [m.queue for m in sent] == ["feeds", "mail", "celery", "urgent"]


def test_priority_must_be_zero_to_nine() -> None:
    app = make_app()
    with pytest.raises(ValueError, match="0 to 9"):
        app.send_task("x", priority=10)


def test_countdown_and_eta_become_headers() -> None:
    app = make_app()
    sent = []
    app.publish_raw = lambda messages, **kw: sent.extend(messages)  # type: ignore[method-assign]
    before = time.time()
    app.send_task("x", countdown=30)
    eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    app.send_task("x", eta=eta, expires=60)
    first, second = sent
    assert 29 < first.delay <= 30
    assert datetime.datetime.fromisoformat(first.headers["eta"]).timestamp() >= before + 29
    assert (
        abs(datetime.datetime.fromisoformat(second.headers["eta"]).timestamp() - eta.timestamp())
        < 0.01
    )
    assert "expires" in second.headers


def test_custom_headers_travel_and_reserved_ones_are_refused() -> None:
    app = make_app()

    @app.task(bind=True)
    def headers(self: Task) -> dict[str, str]:
        return dict(self.request.headers)

    with start_worker(app):
        got = headers.apply_async(headers={"traceparent": "00-abc-def-01"}).get(timeout=10)
    assert got["traceparent"] == "00-abc-def-01"
    with pytest.raises(ValueError, match="envelope"):
        headers.apply_async(headers={"task": "evil"})


def test_transactional_enqueue_needs_a_sql_broker() -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="SQL broker"):
        app.send_task("x", connection=object())


# -- running -------------------------------------------------------------------------


def test_eager_mode_runs_locally_and_propagates() -> None:
    app = make_app(task_always_eager=True, task_eager_propagates=True)

    @app.task
    def div(x: int, y: int) -> float:
        return x / y

    assert div.delay(6, 3).get() == 2
    with pytest.raises(ZeroDivisionError):
        div.delay(1, 0)


def test_retry_with_backoff_and_max_retries() -> None:
    app = make_app()
    calls: list[int] = []

    @app.task(
        bind=True,
        autoretry_for=(ConnectionError,),
        max_retries=3,
        retry_backoff=0.05,
        retry_jitter=False,
    )
    def flaky(self: Task) -> int:
        calls.append(self.request.retries)
        if self.request.retries < 2:
            raise ConnectionError("down")
        return self.request.retries

    @app.task(bind=True, max_retries=1, default_retry_delay=0.01)
    def hopeless(self: Task) -> None:
        raise self.retry(exc=KeyError("never"))

    with start_worker(app):
        assert flaky.delay().get(timeout=10) == 2
        result = hopeless.delay()
        with pytest.raises(KeyError):
            result.get(timeout=10)
    assert calls == [0, 1, 2]
    assert result.retries == 1


def test_hooks_and_signals_are_called() -> None:
    app = make_app()
    seen: list[str] = []

    class Audited(app.Task):  # type: ignore[name-defined,misc]
        def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
            seen.append("before_start")

        def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
            seen.append(f"on_success:{retval}")

        def on_failure(
            self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: str
        ) -> None:
            seen.append(f"on_failure:{type(exc).__name__}")

        def after_return(self, status: str, *rest: Any) -> None:
            seen.append(f"after_return:{status}")

    @app.task(base=Audited)
    def ok() -> int:
        return 1

    @app.task(base=Audited)
    def bad() -> None:
        raise RuntimeError("x")

    def on_prerun(sender: Any = None, **kw: Any) -> None:
        seen.append(f"prerun:{kw['task'].name}")

    signals.task_prerun.connect(on_prerun)
    try:
        with start_worker(app, pool="solo"):
            ok.delay().get(timeout=10)
            with pytest.raises(RuntimeError):
                bad.delay().get(timeout=10)
    finally:
        signals.task_prerun.disconnect(on_prerun)
    assert seen == [
        f"prerun:{ok.name}",
        "before_start",
        "on_success:1",
        "after_return:SUCCESS",
        f"prerun:{bad.name}",
        "before_start",
        "on_failure:RuntimeError",
        "after_return:FAILURE",
    ]


def test_reject_and_ignore() -> None:
    app = make_app()
    attempts: list[int] = []

    @app.task(bind=True)
    def reject_once(self: Task) -> str:
        attempts.append(self.request.delivery_count)
        if self.request.delivery_count == 1:
            raise Reject("not yet", requeue=True)
        return "second time"

    @app.task
    def poison() -> None:
        raise Reject("bad input", requeue=False)

    @app.task
    def ignored() -> None:
        raise Ignore()

    with start_worker(app):
        assert reject_once.delay().get(timeout=10) == "second time"
        poison.delay()
        ignored_result = ignored.delay()
        deadline = time.time() + 10
        while not app.transport.dead_letters("celery") and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert ignored_result.state == states.PENDING  # Ignore stores nothing
    assert attempts == [1, 2]
    (dead,) = app.transport.dead_letters("celery")
    assert "bad input" in dead.reason


def test_get_inside_a_task_raises() -> None:
    app = make_app()

    @app.task
    def inner() -> int:
        return 1

    @app.task
    def outer() -> int:
        return int(inner.delay().get(timeout=5))

    with start_worker(app):
        with pytest.raises(RuntimeError, match=r"Never call result\.get"):
            outer.delay().get(timeout=10)


def test_exceptions_outside_the_allow_list_are_not_rebuilt() -> None:
    app = make_app()

    class PrivateError(Exception):
        pass

    @app.task
    def private() -> None:
        raise PrivateError("secret sauce")

    with start_worker(app):
        result = private.delay()
        with pytest.raises(TaskError, match="PrivateError: secret sauce"):
            result.get(timeout=10)
        app.conf.result_exception_allowlist = [PrivateError]
        with pytest.raises(PrivateError, match="secret sauce"):
            private.delay().get(timeout=10)


def test_update_state_meta_and_result_extended() -> None:
    app = make_app(result_extended=True)

    @app.task(bind=True)
    def report(self: Task, n: int) -> int:
        self.update_state(state="PROGRESS", meta={"done": n})
        return n

    with start_worker(app):
        result = report.delay(3)
        assert result.get(timeout=10) == 3
    assert result.name == report.name
    assert result.args == [3]
    assert result.worker and "@" in result.worker
    assert result.date_done is not None


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_serializers_and_compression(serializer: str) -> None:
    app = make_app(
        task_serializer=serializer,
        accept_content=[serializer],
        result_serializer=serializer,
        task_compression="gzip",
    )

    @app.task
    def echo(value: Any) -> Any:
        return value

    payload = {"text": "héllo", "numbers": [1, 2.5, None], "nested": {"ok": True}}
    with start_worker(app):
        assert echo.delay(payload).get(timeout=10) == payload


def test_unserializable_result_fails_clearly() -> None:
    app = make_app()

    @app.task
    def returns_object() -> object:
        return object()

    with start_worker(app):
        result = returns_object.delay()
        with pytest.raises(TypeError, match="cannot be stored"):
            result.get(timeout=10)


def test_get_takes_the_record_the_wait_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    # A record stored while get() waits reaches it with the wake-up: reading it
    # again would cost every round trip one more request to the result store.
    from polyq.execution import store_state

    app = make_app()
    backend = app.backend
    reads: list[str] = []
    real_get, real_wait = backend.get, backend.wait

    def get(key: str) -> bytes | None:
        reads.append(key)
        return real_get(key)

    def wait(key: str, timeout: float) -> bytes | None:
        store_state(app, "t-1", states.SUCCESS, 42)  # finishes while get() waits
        return real_wait(key, timeout)

    monkeypatch.setattr(backend, "get", get)
    monkeypatch.setattr(backend, "wait", wait)
    assert app.AsyncResult("t-1").get(timeout=5) == 42
    assert len(reads) == 1  # the first look, which found nothing yet


def test_forget_and_revoke() -> None:
    app = make_app()

    @app.task
    def value() -> int:
        return 5

    with start_worker(app):
        result = value.delay()
        assert result.get(timeout=10) == 5
        result.forget()
        assert app.AsyncResult(result.id).state == states.PENDING
        later = value.apply_async(countdown=1)
        later.revoke()
        with pytest.raises(Exception, match="revoked"):
            later.get(timeout=10)


def test_rate_limit_spaces_calls() -> None:
    app = make_app()
    starts: list[float] = []

    @app.task(rate_limit="10/s")
    def limited() -> None:
        starts.append(time.monotonic())

    with start_worker(app, concurrency=4):
        for r in [limited.delay() for _ in range(6)]:
            r.get(timeout=10)
    span = max(starts) - min(starts)
    assert span >= 0.4, f"6 calls at 10/s took only {span:.2f}s"


# -- task_annotations --------------------------------------------------------------


def test_annotations_for_every_task_then_for_one() -> None:
    # The specific entry wins over "*", whichever comes first in a list.
    app = make_app(
        task_annotations=[
            {"t.slow": {"rate_limit": "1/s", "max_retries": 7}},
            {"*": {"rate_limit": "10/s", "acks_late": False}},
        ]
    )

    @app.task(name="t.slow")
    def slow() -> None: ...

    @app.task(name="t.fast")
    def fast() -> None: ...

    assert (slow.rate_limit, slow.max_retries, slow.acks_late) == ("1/s", 7, False)
    assert (fast.rate_limit, fast.max_retries, fast.acks_late) == ("10/s", 3, False)


def test_annotation_objects_and_autoretry_for() -> None:
    class Retrying:
        def annotate(self, task: Task) -> dict[str, Any] | None:
            if task.name.startswith("net."):
                return {"autoretry_for": [OSError], "retry_backoff": True}
            return None

    app = make_app(task_annotations=Retrying())

    @app.task(name="net.fetch")
    def fetch() -> None: ...

    @app.task(name="local.sum")
    def local() -> None: ...

    assert fetch.autoretry_for == (OSError,) and fetch.retry_backoff is True
    assert local.autoretry_for == () and local.retry_backoff is False


def test_annotations_set_after_the_tasks_apply_on_first_use() -> None:
    app = make_app()

    @app.task(name="t.report")
    def report() -> int:
        return 1

    app.conf.task_annotations = {"t.report": {"queue": "reports", "ignore_result": True}}
    report.delay()  # the first send finalizes the app: the message goes to "reports"
    assert app.transport.size("reports") == 1
    assert app.transport.size(app.conf.task_default_queue) == 0
    assert report.ignore_result is True


def test_annotations_reach_the_worker() -> None:
    app = make_app(task_annotations={"*": {"rate_limit": "10/s"}})
    starts: list[float] = []

    @app.task
    def limited() -> None:
        starts.append(time.monotonic())

    with start_worker(app, concurrency=4):
        for r in [limited.delay() for _ in range(6)]:
            r.get(timeout=10)
    assert max(starts) - min(starts) >= 0.4


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"*": {"rate_limt": "1/s"}}, r"task_annotations\['\*'\] sets 'rate_limt' on "),
        ({"t.x": {"name": "other"}}, r"sets 'name' on t.x, which is not a task option"),
        ({"t.x": {"delay": 1}}, r"sets 'delay' on t.x, which is not a task option"),
        ({"t.x": {"@on_failure": print}}, r"wraps the method 'on_failure' of t.x"),
        ([{"*": {}}, "t.x"], r"task_annotations\[1\] is 't.x'"),
    ],
)
def test_bad_annotations_are_clear_errors(annotations: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app = make_app(task_annotations=annotations)  # "*" meets polyq's own tasks here

        @app.task(name="t.x")
        def x() -> None: ...

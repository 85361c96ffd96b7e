"""The connection: URL parsing, the I/O thread that owns pika, and reconnection.

Every broker operation runs on this thread's asyncio loop; callers hand it work with
:meth:`Link.call` or :meth:`Link.soon`. See docs/design/rabbitmq.md (*Threading*,
*Reconnection*).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import os
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote

import pika
import pika.exceptions
from pika.channel import Channel

from polyq.exceptions import BrokerError, BrokerRefused, ConfigurationError
from polyq.url import is_loopback, redact, split_url, url_list, warn_insecure

from .fastpath import FastConnection, PlainConnection

logger = logging.getLogger("polyq.transports.rabbitmq")

T = TypeVar("T")
Connection = FastConnection | PlainConnection

REFUSED = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
)
_RECONNECT_MIN = 0.1
_RECONNECT_MAX = 2.0


def split_urls(url: str) -> list[str]:
    """The brokers of a ``;``-separated list, tried in turn."""
    parts = url_list(url)  # a ";" only before another amqp://: a password may hold one
    if not parts:
        raise ConfigurationError("empty RabbitMQ URL; expected amqp://user:password@host//")
    return parts


def parameters(
    url: str,
    options: Mapping[str, Any],
    heartbeat: int,
    connect_timeout: float,
    confirm_timeout: float,
) -> pika.URLParameters:
    """pika's connection parameters for one broker URL (polyq's query options removed)."""
    split = split_url(url)  # a password may hold "@", "/", "?" or "#" as typed
    scheme = split.scheme.lower()
    if scheme == "pyamqp":
        scheme = "amqp"
    if scheme not in {"amqp", "amqps"}:
        raise ConfigurationError(
            f"{redact(url)} is not an AMQP URL; expected amqp://user:password@host:5672/vhost"
        )
    # The query string carries polyq's options, which pika would reject; the user
    # info is re-encoded for pika's strict parser.
    bare = dataclasses.replace(split, scheme=scheme, query="", fragment="").geturl()
    try:
        params = pika.URLParameters(bare)
    except Exception as exc:
        raise ConfigurationError(f"cannot parse the RabbitMQ URL {redact(url)}: {exc}") from exc
    # Celery's spelling: "//" (or nothing) is the vhost "/".
    vhost = unquote(split.path[1:]) if split.path not in ("", "/", "//") else "/"
    params.virtual_host = vhost
    params.heartbeat = heartbeat
    params.connection_attempts = 1
    params.socket_timeout = connect_timeout
    params.stack_timeout = connect_timeout
    params.blocked_connection_timeout = confirm_timeout
    params.client_properties = {"connection_name": f"polyq pid {os.getpid()}"}
    if scheme == "amqps":
        context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
        certfile = options.get("ssl_certfile")
        if certfile:
            context.load_cert_chain(certfile, options.get("ssl_keyfile"))
        if not options.get("ssl_verify", True):
            if not is_loopback(split.hostname):
                warn_insecure(
                    logger,
                    url,
                    "TLS without certificate verification (ssl_verify=false): anyone on the "
                    "network path can read and alter messages",
                    "Remove ssl_verify=false and set ssl_ca_certs=<CA file> (or rely on the "
                    "system's CAs).",
                )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        params.ssl_options = pika.SSLOptions(context, server_hostname=split.hostname)
    return params


def resolve(fut: asyncio.Future[Any]) -> Callable[..., None]:
    """A pika callback that completes ``fut`` with its first argument."""

    def done(*args: Any) -> None:
        if not fut.done():
            fut.set_result(args[0] if args else None)

    return done


def _on_conn_closed(fut: asyncio.Future[Any], _conn: Any, reason: BaseException) -> None:
    if not fut.done():
        fut.set_result(reason)


def _root_cause(exc: BaseException) -> BaseException:
    """The broker's answer inside pika's connection-workflow wrappers."""
    for _ in range(5):
        inner = getattr(exc, "exceptions", None) or ()
        if inner and isinstance(inner[-1], BaseException):
            exc = inner[-1]
        elif isinstance(getattr(exc, "exception", None), BaseException):
            exc = exc.exception  # type: ignore[attr-defined]
        else:
            break
    return exc


def describe_close(reason: BaseException | None) -> str:
    """A channel's or connection's close reason, as the broker gave it."""
    if isinstance(reason, pika.exceptions.ChannelClosed | pika.exceptions.ConnectionClosed):
        return f"{reason.reply_code} {reason.reply_text}"
    return repr(reason) if reason is not None else "unknown reason"


class Link:
    """One pika connection, driven by one daemon I/O thread running an asyncio loop.

    ``on_setup`` runs (on the loop) after each (re)connection; ``on_lost(message)``
    runs when the connection closes, to fail and forget what depended on it. ``cond``
    is shared with the consumer: it guards ``up_flag`` and ``down_since`` too.
    """

    def __init__(
        self,
        url: str,
        params: list[pika.URLParameters],
        connection_class: type[Connection],
        connect_timeout: float,
        confirm_timeout: float,
        cond: threading.Condition,
    ) -> None:
        self.url = url
        self.params = params
        self.connection_class = connection_class
        self.connect_timeout = connect_timeout
        #: How long one caller's operation may take: connecting, declaring and
        #: confirming each have their own limit inside.
        self.budget = connect_timeout * 3 + confirm_timeout + 5
        self.cond = cond
        self.on_setup: Callable[[], Awaitable[None]] | None = None
        self.on_lost: Callable[[str], None] | None = None
        self.pid = os.getpid()
        self.start_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.loop = asyncio.new_event_loop()
        self.closed = False
        # Guarded by cond:
        self.up_flag = False
        self.down_since: float | None = None
        self.last_error: BaseException | None = None
        # The I/O thread's only:
        self.conn: Connection | None = None
        self.up = asyncio.Event()
        #: Set while the broker's last answer was a final refusal (credentials,
        #: vhost): waiters for a connection stop waiting at once.
        self.refused = asyncio.Event()
        self.inflight: set[asyncio.Future[Any]] = set()
        self.url_index = 0

    # -- the I/O thread --------------------------------------------------------------

    def start(self) -> None:
        """Start the I/O thread on first use; refuse after ``fork`` or ``close``."""
        if os.getpid() != self.pid:
            raise BrokerError(
                "a RabbitMQ transport was used in a forked child; build a new one in the child"
            )
        if self.closed:
            raise BrokerError(f"the transport for {redact(self.url)} is closed")
        if self.thread is not None:
            return
        with self.start_lock:
            if self.thread is None:
                thread = threading.Thread(target=self._run_loop, name="polyq-amqp-io", daemon=True)
                thread.start()
                self.thread = thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._maintain())
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the I/O loop and wait for its result."""
        try:
            self.start()
        except BaseException:
            coro.close()  # never scheduled
            raise
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerError(
                f"RabbitMQ at {redact(self.url)} did not answer within {timeout:.0f} s"
            ) from None
        except pika.exceptions.AMQPError as exc:
            raise BrokerError(f"RabbitMQ at {redact(self.url)}: {describe_close(exc)}") from exc

    def soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O loop without waiting for it."""
        self.start()
        self.loop.call_soon_threadsafe(fn)

    async def _maintain(self) -> None:
        """Connect, and reconnect with backoff whenever the connection is lost."""
        backoff = _RECONNECT_MIN
        while not self.closed:
            conn = await self._connect_any()
            if conn is None:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX)
                continue
            closed: asyncio.Future[BaseException] = self.loop.create_future()
            self.conn = conn
            conn.add_on_close_callback(functools.partial(_on_conn_closed, closed))
            try:
                if self.on_setup is not None:
                    await self.on_setup()
            except Exception as exc:
                self.last_error = exc
                logger.warning("RabbitMQ at %s: setup failed: %s", self.where(), exc)
                with contextlib.suppress(Exception):
                    conn.close()
            else:
                backoff = _RECONNECT_MIN
                with self.cond:
                    self.up_flag = True
                    self.down_since = None
                self.up.set()
                logger.debug("connected to RabbitMQ at %s", self.where())
            reason = await closed
            self._lost(reason)
            if not self.closed:
                logger.warning(
                    "lost the connection to RabbitMQ at %s (%s); reconnecting",
                    self.where(),
                    describe_close(reason),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX)

    def where(self) -> str:
        """The broker in use (host:port, redacted)."""
        params = self.params[self.url_index]
        return redact(f"{params.host}:{params.port}")

    async def _connect_any(self) -> Connection | None:
        """Try each URL in turn, starting with the last one that worked."""
        count = len(self.params)
        for step in range(count):
            index = (self.url_index + step) % count
            opened: asyncio.Future[Connection] = self.loop.create_future()

            def on_error(
                _conn: Any, exc: str | Exception, fut: asyncio.Future[Any] = opened
            ) -> None:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else BrokerError(exc))

            def on_open(conn: Any, fut: asyncio.Future[Any] = opened) -> None:
                if fut.done():  # we gave up on it: do not leak a late connection
                    conn.close()
                else:
                    fut.set_result(conn)

            try:
                self.connection_class(
                    self.params[index],
                    on_open_callback=on_open,
                    on_open_error_callback=on_error,
                    custom_ioloop=self.loop,
                )
                conn = await asyncio.wait_for(opened, self.connect_timeout + 1)
            except Exception as exc:
                self.last_error = _root_cause(exc)
                if isinstance(self.last_error, REFUSED):
                    self.refused.set()
                continue
            self.refused.clear()
            self.url_index = index
            return conn
        with self.cond:
            if self.down_since is None:
                self.down_since = time.monotonic()
        return None

    def _lost(self, reason: BaseException) -> None:
        """The connection closed: fail what waited on it and forget its channels."""
        self.up.clear()
        self.conn = None
        message = f"lost the connection to RabbitMQ at {self.where()} ({describe_close(reason)})"
        if self.on_lost is not None:
            self.on_lost(message)
        for fut in list(self.inflight):
            if not fut.done():
                fut.set_exception(BrokerError(message))
        self.inflight.clear()
        with self.cond:
            self.up_flag = False
            if self.down_since is None:
                self.down_since = time.monotonic()
            self.last_error = reason

    async def connected(self) -> Connection:
        """The open connection, waiting up to ``connect_timeout`` for one; a final
        refusal (credentials, vhost) ends the wait at once."""
        if not self.up.is_set():
            if isinstance(self.last_error, REFUSED):
                raise self.unreachable()  # retrying will not change the broker's mind
            waits = [
                asyncio.ensure_future(self.up.wait()),
                asyncio.ensure_future(self.refused.wait()),
            ]
            try:
                await asyncio.wait(
                    waits, timeout=self.connect_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waits:
                    waiter.cancel()
            if not self.up.is_set():
                raise self.unreachable()
        assert self.conn is not None
        return self.conn

    def unreachable(self) -> BrokerError:
        """The error for a broker not reached within ``connect_timeout``."""
        last = self.last_error
        detail = describe_close(last) if last is not None else "no answer"
        if isinstance(last, pika.exceptions.ProbableAccessDeniedError):
            detail = f"access denied ({last}); check that the vhost exists and the user may use it"
        elif isinstance(last, REFUSED):
            detail = f"authentication failed ({last}); check the user and password in the URL"
        if isinstance(last, REFUSED):
            return BrokerRefused(f"RabbitMQ at {redact(self.url)} refused the connection: {detail}")
        return BrokerError(
            f"cannot reach RabbitMQ at {redact(self.url)} within {self.connect_timeout:.0f} s: "
            f"{detail}. Check that the broker runs and the URL is right."
        )

    async def channel(self) -> Channel:
        """A new channel on the connection (waiting for one if needed)."""
        conn = self.conn
        if conn is None or not conn.is_open:  # open during setup, before up is set
            conn = await self.connected()
        opened: asyncio.Future[Channel] = self.loop.create_future()
        self.inflight.add(opened)
        try:
            conn.channel(on_open_callback=resolve(opened))
            return await opened
        finally:
            self.inflight.discard(opened)

    @contextlib.asynccontextmanager
    async def temp(self) -> AsyncIterator[TempChannel]:
        """A short-lived channel, closed on leaving the block."""
        channel = TempChannel(self, await self.channel())
        try:
            yield channel
        finally:
            await channel.close()

    def gathered(self) -> contextlib.AbstractContextManager[None]:
        """Frames emitted inside go to the socket in few writes (fast path only)."""
        conn = self.conn
        return conn.gathered() if conn is not None else contextlib.nullcontext()

    def close(self) -> None:
        """Close the connection and stop the I/O thread (from a caller's thread)."""
        self.closed = True
        thread = self.thread
        if thread is None or os.getpid() != self.pid:
            if thread is None:
                self.loop.close()
            return

        async def shutdown() -> None:
            conn = self.conn
            if conn is not None and conn.is_open:
                closed = self.loop.create_future()
                conn.add_on_close_callback(lambda *_: resolve(closed)())
                with contextlib.suppress(Exception):
                    conn.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closed, 5.0)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            self.loop.call_soon(self.loop.stop)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop)
        thread.join(10.0)
        if not thread.is_alive():
            self.loop.close()


class TempChannel:
    """A short-lived channel whose RPCs are awaitable; a broker error closing it
    fails the pending RPC with the broker's reason."""

    def __init__(self, link: Link, channel: Channel) -> None:
        self.link = link
        self.channel = channel
        self.closed_by: BaseException | None = None
        self._waiting: set[asyncio.Future[Any]] = set()
        channel.add_on_close_callback(self._on_close)

    def _on_close(self, _channel: Channel, reason: BaseException) -> None:
        self.closed_by = reason
        for fut in self._waiting:
            if not fut.done():
                fut.set_exception(reason)

    async def call(self, start: Callable[..., Any]) -> Any:
        """Run ``start(callback=...)`` and wait for the callback's first argument."""
        if self.closed_by is not None:
            raise self.closed_by
        fut: asyncio.Future[Any] = self.link.loop.create_future()
        self._waiting.add(fut)
        self.link.inflight.add(fut)

        def done(*args: Any) -> None:
            if not fut.done():
                fut.set_result(args[0] if len(args) == 1 else args)

        try:
            start(callback=done)
            return await fut
        finally:
            self._waiting.discard(fut)
            self.link.inflight.discard(fut)

    async def close(self) -> None:
        """Close the channel and wait until the broker has (messages it delivered
        unacked are back in their queues then)."""
        if not self.channel.is_open:
            return
        closed: asyncio.Future[Any] = self.link.loop.create_future()
        self.channel.add_on_close_callback(lambda *_: resolve(closed)())
        with contextlib.suppress(Exception):
            self.channel.close()
            await asyncio.wait_for(asyncio.shield(closed), 5.0)

"""The Redis transport: a leased, prioritised, delayable queue on sorted sets and Lua.

URLs
----
``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), and for
Sentinel ``redis+sentinel://[[user]:password@]host1:26379[,host2:26379...][/db]``
with the ``master_name`` option (Celery's ``sentinel://h1:26379;sentinel://h2:26379``
spelling is accepted too). Options come from ``broker_transport_options`` and the
query string (the query string wins).

Why sorted sets and Lua, not Streams or BLMOVE lists
----------------------------------------------------
The contract asks for four things at once: priorities, delays that never block
behind each other, a lease that the worker *extends*, and a delivery count. A
plain list gives none of them without side structures (kombu's ``BRPOP`` then
``unacked`` hash loses a message if the worker dies between the two steps). A
Stream gives leases and counts through its pending list, but no priorities (one
stream per priority, read in turn) and no delays (a sorted set beside it anyway),
and taking back lapsed leases (``XAUTOCLAIM``) is a second round trip beside
``XREADGROUP``. With sorted sets, one script does all of it in one round trip.
Every queue ``Q`` is a handful of keys under ``{namespace}:{Q}:`` (the ``{Q}``
hash tag keeps them in one slot):

* ``ready``   sorted set, member ``"<priority>:<seq>"``, score
  ``(9 - priority) * 2**40 + seq``: ``ZPOPMIN`` takes the highest priority, oldest
  first, up to ``max_messages`` at once.
* ``delayed`` sorted set scored by the due time (ms, Redis server clock).
* ``leased``  sorted set scored by the lease deadline (ms, Redis server clock).
* ``msg``     hash member -> payload (message id, headers, body); written once.
* ``count``   hash member -> deliveries so far; the receipt carries the count it
  was delivered with, which fences a late ack/nack/dead-letter from a holder
  whose lease ran out and whose message went to someone else. ``extend_lease``
  takes back a lapsed lease whose message was not handed out again.
* ``dead`` (sorted set by failure time) and ``deadinfo`` (member -> reason).
* ``notify``  a list holding at most one token while ``ready`` is not empty.
* ``seq``     a counter giving each message its place in line.

Each operation is one Lua script, so a message is always in exactly one of
``ready``/``delayed``/``leased``/``dead`` and no crash between two commands can
lose it. ``receive`` runs one script that first moves due delayed messages and
expired leases back to ``ready`` (the count is raised when they are delivered
again), then pops and leases a batch and returns it in the same round trip.
When nothing is ready the consumer blocks on ``BLPOP`` of the ``notify`` lists
(no polling), pipelined with the receive script so that Redis runs the script the
moment it wakes, no longer than ``wait`` and no longer than until the next delayed
message or lease deadline the script reported; a publish pushes a token when it
makes something ready or brings the next due time forward, so a 1 s countdown
sent after a 1 h one is woken for after 1 s. A consumer that leaves messages in
``ready`` puts the token back, waking the next consumer in turn.

All times come from the Redis server's ``TIME``, so clock skew between machines
cannot shorten a lease or fire a countdown early.

Options
-------
``visibility_timeout`` (s, default 1800), ``namespace`` (key and channel prefix,
default ``"polyq"``; Celery's ``global_keyprefix`` is an alias), ``master_name``
and ``sentinel_kwargs`` (Sentinel), ``socket_timeout`` (s, default 10; blocking
reads are cut into pieces shorter than half of it, because redis-py 8's own 5 s
default would break a longer ``BLPOP``), ``socket_connect_timeout`` (default 5),
``health_check_interval`` (default 25), ``max_connections`` (a cap on the pool;
with it set, publishing checks connections out of the pool too, which costs more
per call than the transport's own idle list of publishing connections), ``retries``
(reconnect attempts per command, default 2), ``username``/``password``,
``ssl_cert_reqs`` (``required`` by default; ``optional``/``none`` log a warning),
``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, or
all of those as one ``ssl`` dict (Celery's ``broker_use_ssl``).

Broadcast uses Redis pub/sub on ``{namespace}:{db}:broadcast:{channel}``: pub/sub
ignores the database number, so the db and namespace in the name keep two apps on
one Redis from hearing each other.

Durability is whatever the server's persistence gives (AOF ``appendfsync always``
for no loss across a crash). ``maxmemory-policy`` ``allkeys-*`` can evict queue
keys: the first ``receive`` logs a warning then (and skips the check quietly where
``CONFIG GET`` is denied). Redis Cluster is not supported (a receive spans queues).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.client import PubSub
from redis.commands.core import Script
from redis.connection import Connection
from redis.exceptions import NoScriptError
from redis.retry import Retry
from redis.sentinel import Sentinel

from polyq.exceptions import BrokerError, ConfigurationError, MessageTooLarge
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    ScheduledMessage,
    Subscription,
    Transport,
)
from polyq.url import query_options, redact

__all__ = ["RedisSubscription", "RedisTransport", "connect"]

logger = logging.getLogger(__name__)

#: Redis refuses bulk strings over ``proto-max-bulk-len`` (512 MiB by default);
#: keep a margin for the envelope around the body.
MAX_MESSAGE_SIZE = 512 * 1024 * 1024 - 64 * 1024

# Options understood here, and Celery Redis transport options that mean nothing to
# this design (accepted so a ported configuration does not warn).
_KNOWN_OPTIONS = frozenset(
    {
        "visibility_timeout", "namespace", "global_keyprefix", "master_name", "sentinel_kwargs",
        "socket_timeout", "socket_connect_timeout", "socket_keepalive", "health_check_interval",
        "max_connections", "retries", "retry_on_timeout", "username", "password", "protocol",
        "ssl", "broker_use_ssl", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
        "ssl_keyfile", "ssl_check_hostname", "ssl_password", "client_name", "db",
    }
)  # fmt: skip
_IGNORED_CELERY_OPTIONS = frozenset(
    {
        "polling_interval", "fanout_prefix", "fanout_patterns", "priority_steps", "sep",
        "queue_order_strategy", "unacked_mutex_expire", "unacked_mutex_key", "unacked_key",
        "unacked_index_key", "unacked_restore_limit", "max_retries", "interval_start",
        "interval_step", "interval_max", "result_chord_ordered", "retry_policy",
    }
)  # fmt: skip
_SSL_KEYS = (
    "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
    "ssl_check_hostname", "ssl_password",
)  # fmt: skip


# -- connecting ---------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, str | None, str | None, list[tuple[str, int]], int]:
    """``(scheme, username, password, [(host, port)...], db)`` of one Redis URL.

    Parsed by hand because ``urlsplit`` cannot read a Sentinel host list.
    """
    scheme, _, rest = url.partition("://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if sep else None
        if not sep and user:  # "redis://secret@host" is Celery's password-only spelling
            username, password = None, unquote(user)
    default_port = 26379 if "sentinel" in scheme.lower() else 6379
    hosts: list[tuple[str, int]] = []
    for part in filter(None, netloc.split(",")):
        if part.startswith("["):  # [IPv6]:port
            host, _, port = part[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = part.partition(":")
        try:
            hosts.append((host or "localhost", int(port) if port else default_port))
        except ValueError:
            raise ConfigurationError(
                f"bad port {port!r} in Redis URL {redact(url)!r}; expected host:port"
            ) from None
    path = path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ConfigurationError(
            f"bad database {path!r} in Redis URL {redact(url)!r}; the path must be a "
            "database number such as /0"
        ) from None
    return scheme.lower(), username, password, hosts or [("localhost", default_port)], db


def _ssl_kwargs(options: Mapping[str, Any], url: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for nested in ("broker_use_ssl", "ssl"):
        if isinstance(options.get(nested), Mapping):
            merged.update(options[nested])
    merged.update({k: options[k] for k in _SSL_KEYS if k in options})
    unknown = set(merged) - set(_SSL_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown TLS option(s) {sorted(unknown)} for {redact(url)}; use {list(_SSL_KEYS)}"
        )
    reqs = str(merged.get("ssl_cert_reqs", "required")).lower().removeprefix("cert_")
    if reqs not in {"required", "optional", "none"}:
        raise ConfigurationError(
            f"ssl_cert_reqs={merged['ssl_cert_reqs']!r} for {redact(url)}: use required, "
            "optional or none"
        )
    if reqs != "required":
        logger.warning(
            "TLS to %s does not verify the server certificate (ssl_cert_reqs=%s); anyone "
            "on the path can read and alter messages. Set ssl_cert_reqs=required and "
            "ssl_ca_certs to fix it.",
            redact(url),
            reqs,
        )
    merged["ssl_cert_reqs"] = reqs
    return {"ssl": True, **merged}


def connect(url: str, options: Mapping[str, Any]) -> tuple[redis.Redis, int]:
    """A redis-py client for ``url`` (plain, TLS or Sentinel) and its database number.

    Shared with :mod:`polyq_backends.redis`. The socket timeout is set deliberately
    (default 10 s) rather than left at redis-py 8's 5 s; callers keep every
    blocking command well below it.
    """
    options = {**options, **query_options(url)}
    scheme, username, password, hosts, db = _split_url(url.split(";", 1)[0])
    if ";" in url:  # Celery: sentinel://h1:26379;sentinel://h2:26379
        for extra in url.split(";")[1:]:
            hosts += _split_url(extra)[3]
    # TLS: the rediss scheme, or ssl=True / an ssl dict / Celery's broker_use_ssl dict
    tls = scheme.startswith("rediss") or any(
        options.get(key) is True or (isinstance(options.get(key), Mapping) and options[key])
        for key in ("ssl", "broker_use_ssl")
    )
    if "db" in options:
        db = int(options["db"])
    kwargs: dict[str, Any] = {
        "db": db,
        "username": options.get("username", username),
        "password": options.get("password", password),
        "socket_timeout": float(options.get("socket_timeout", 10.0)),
        "socket_connect_timeout": float(options.get("socket_connect_timeout", 5.0)),
        "socket_keepalive": bool(options.get("socket_keepalive", True)),
        "health_check_interval": int(options.get("health_check_interval", 25)),
        # A bounded retry: a down broker must surface as an error within seconds.
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), int(options.get("retries", 2))),
        "decode_responses": False,
    }
    for key in ("max_connections", "client_name", "protocol"):
        if key in options:
            kwargs[key] = options[key]
    if tls:
        kwargs.update(_ssl_kwargs(options, url))
    if "sentinel" in scheme:
        master = options.get("master_name")
        if not master:
            raise ConfigurationError(
                f"the Sentinel URL {redact(url)} needs the master's name: add "
                "?master_name=<name> or broker_transport_options={'master_name': ...}"
            )
        sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
        sentinel_kwargs.setdefault("socket_timeout", kwargs["socket_timeout"])
        sentinel_kwargs.setdefault("socket_connect_timeout", kwargs["socket_connect_timeout"])
        # A dead sentinel must not be retried with backoff: the next one is asked.
        sentinel_kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)
        master_client: redis.Redis = sentinel.master_for(str(master), redis_class=redis.Redis)
        return master_client, db
    host, port = hosts[0]
    return redis.Redis(host=host, port=port, **kwargs), db


class translate_errors:
    """``with translate_errors(url, "publish 3 messages"):`` turns redis-py errors
    raised inside the block into :class:`BrokerError` saying what failed, where
    (credentials redacted) and how to fix it. Costs nothing when nothing fails:
    the URL is only redacted then."""

    __slots__ = ("url", "what")

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None or not isinstance(exc, redis.RedisError):
            return
        where, what, detail = redact(self.url), self.what, redact(str(exc))
        if isinstance(exc, redis.AuthenticationError):
            raise BrokerError(
                f"Redis at {where} refused the credentials while trying to {what}: {detail}. "
                "Check the username and password in the URL."
            ) from exc
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            raise BrokerError(
                f"cannot reach Redis at {where} to {what}: {detail}. Is the server running "
                "and the URL's host, port and TLS setting right?"
            ) from exc
        if isinstance(exc, redis.exceptions.OutOfMemoryError):
            raise BrokerError(
                f"Redis at {where} is out of memory and refused to {what}: {detail}. Raise "
                "maxmemory or drain queues; nothing was stored by the refused command."
            ) from exc
        raise BrokerError(f"Redis at {where} failed to {what}: {detail}") from exc


# Packed by hiredis straight away when it is installed (the redis extra brings it):
# redis-py's packer looks at every argument in Python first. A request is an array of
# bulk strings under RESP2 and RESP3 alike.
_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - redis-py then packs
    _pack_command = None


def _roundtrip(conn: Connection, command: tuple[Any, ...]) -> Any:
    # connect() first, as the pool does: a Sentinel connection finds the master there
    # (sending on an unconnected one would dial the default localhost:6379).
    conn.connect()
    if _pack_command is None:
        conn.send_command(*command)
    else:
        conn.send_packed_command([_pack_command(command)])
    return conn.read_response()


# -- message payload ----------------------------------------------------------------------

_LEN = struct.Struct(">I")
# Built once: json.dumps() with options builds a new encoder on every call.
_META_ENCODER = json.JSONEncoder(separators=(",", ":"))
_VERSION = b"\x01"


def _pack(message: OutgoingMessage) -> bytes:
    """The stored form of a message: version, meta length, meta JSON, raw body.

    Raises :class:`MessageTooLarge` before building anything too big to store.
    """
    headers = message.headers
    meta = _META_ENCODER.encode(
        [message.message_id, headers if type(headers) is dict else dict(headers)]
    )
    encoded = meta.encode()
    size = 5 + len(encoded) + len(message.body)
    if size > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(
            f"message {message.message_id} for queue {message.queue!r} is {size} bytes; "
            f"Redis takes at most {MAX_MESSAGE_SIZE}. Nothing was sent: store large data "
            "elsewhere and pass a reference."
        )
    return _VERSION + _LEN.pack(len(encoded)) + encoded + message.body


def _unpack(payload: bytes) -> tuple[str, dict[str, str], bytes]:
    (size,) = _LEN.unpack_from(payload, 1)
    message_id, headers = json.loads(payload[5 : 5 + size])
    return message_id, headers, payload[5 + size :]


def _priority_of(member: str) -> int:
    return int(member.split(":", 1)[0])


# -- Lua ----------------------------------------------------------------------------------
# Shared Lua prelude. Numbers are written with %.0f: Redis turns a Lua number into a
# string with 14 significant digits, which would round scores and times.

_LUA_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function num(x) return string.format('%.0f', x) end
local function ready_score(member)
  local sep = string.find(member, ':', 1, true)
  local p = tonumber(string.sub(member, 1, sep - 1))
  return num((9 - p) * 1099511627776 + tonumber(string.sub(member, sep + 1)))
end
"""

# KEYS: ready, delayed, msg, seq, notify, queues
# ARGV: queue, register (1: add it to the queue list), n, (priority, delay ms, payload)*n
_PUBLISH = (
    _LUA_COMMON
    + """
local n = tonumber(ARGV[3])
local first = redis.call('INCRBY', KEYS[4], n) - n
local now = nil
local wake = false
for i = 1, n do
  local p = tonumber(ARGV[1 + i * 3])
  local delay = tonumber(ARGV[2 + i * 3])
  local seq = first + i
  local member = p .. ':' .. seq
  redis.call('HSET', KEYS[3], member, ARGV[3 + i * 3])
  if delay > 0 then
    now = now or now_ms()
    local due = now + delay
    local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    if head[2] == nil or due < tonumber(head[2]) then wake = true end
    redis.call('ZADD', KEYS[2], num(due), member)
  else
    redis.call('ZADD', KEYS[1], num((9 - p) * 1099511627776 + seq), member)
    wake = true
  end
end
if ARGV[2] == '1' then redis.call('SADD', KEYS[6], ARGV[1]) end
if wake and redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], '1') end
return n
"""
)

# The common .delay(): one message, no delay. The same writes as _PUBLISH with n = 1,
# without the batch loop and the shared prelude (about a third less server time).
# KEYS: ready, msg, seq, notify, queues
# ARGV: queue, register (1: add it to the queue list), priority, payload
_PUBLISH_NOW = """
local seq = redis.call('INCR', KEYS[3])
local member = ARGV[3] .. ':' .. seq
redis.call('HSET', KEYS[2], member, ARGV[4])
local score = (9 - tonumber(ARGV[3])) * 1099511627776 + seq
redis.call('ZADD', KEYS[1], string.format('%.0f', score), member)
if ARGV[2] == '1' then redis.call('SADD', KEYS[5], ARGV[1]) end
if redis.call('LLEN', KEYS[4]) == 0 then redis.call('RPUSH', KEYS[4], '1') end
return 1
"""

# KEYS: (ready, delayed, leased, msg, count, notify) per queue
# ARGV: queue count, max messages, lease ms
# Returns {next due ms or -1, now ms, (queue index, member, count, payload)*}
_RECEIVE = (
    _LUA_COMMON
    + """
local nq, want, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local out = {-1, now}
local next_due = -1
for q = 0, nq - 1 do
  local ready, delayed, leased = KEYS[q * 6 + 1], KEYS[q * 6 + 2], KEYS[q * 6 + 3]
  local msg, count, notify = KEYS[q * 6 + 4], KEYS[q * 6 + 5], KEYS[q * 6 + 6]
  -- due delayed messages and lapsed leases become ready (bounded work per call)
  for _, source in ipairs({delayed, leased}) do
    local due = redis.call('ZRANGEBYSCORE', source, '-inf', num(now), 'LIMIT', 0, 1000)
    for _, member in ipairs(due) do
      redis.call('ZREM', source, member)
      redis.call('ZADD', ready, ready_score(member), member)
    end
  end
  if want > 0 then
    local popped = redis.call('ZPOPMIN', ready, want)
    for i = 1, #popped, 2 do
      local member = popped[i]
      local payload = redis.call('HGET', msg, member)
      if payload then
        redis.call('ZADD', leased, num(now + lease), member)
        local c = redis.call('HINCRBY', count, member, 1)
        out[#out + 1] = q
        out[#out + 1] = member
        out[#out + 1] = c
        out[#out + 1] = payload
        want = want - 1
      end
    end
  end
  if redis.call('ZCARD', ready) > 0 then
    if redis.call('LLEN', notify) == 0 then redis.call('RPUSH', notify, '1') end
  else
    redis.call('DEL', notify)
  end
  for _, source in ipairs({delayed, leased}) do
    local head = redis.call('ZRANGE', source, 0, 0, 'WITHSCORES')
    if head[2] then
      local due = tonumber(head[2])
      if next_due < 0 or due < next_due then next_due = due end
    end
  end
end
out[1] = next_due
return out
"""
)

# KEYS: ready, delayed, leased, msg, count  ARGV: (member, count)*
_ACK = """
local n = 0
for i = 1, #ARGV, 2 do
  local member = ARGV[i]
  if redis.call('HGET', KEYS[5], member) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[3], member)
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', KEYS[2], member)
    redis.call('HDEL', KEYS[4], member)
    redis.call('HDEL', KEYS[5], member)
    n = n + 1
  end
end
return n
"""

# KEYS: ready, delayed, leased, count, notify  ARGV: member, count, delay ms
_NACK = (
    _LUA_COMMON
    + """
local member, delay = ARGV[1], tonumber(ARGV[3])
if redis.call('HGET', KEYS[4], member) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[3], member)
redis.call('ZREM', KEYS[1], member)
redis.call('ZREM', KEYS[2], member)
if delay > 0 then
  redis.call('ZADD', KEYS[2], num(now_ms() + delay), member)
else
  redis.call('ZADD', KEYS[1], ready_score(member), member)
end
if redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], '1') end
return 1
"""
)

# KEYS: ready, leased, count  ARGV: lease ms, (member, count)*
_EXTEND = (
    _LUA_COMMON
    + """
local deadline = num(now_ms() + tonumber(ARGV[1]))
local n = 0
for i = 2, #ARGV, 2 do
  local member = ARGV[i]
  if redis.call('HGET', KEYS[3], member) == ARGV[i + 1] then
    -- a lease that lapsed but was not handed out again is taken back
    if redis.call('ZSCORE', KEYS[2], member) or redis.call('ZREM', KEYS[1], member) == 1 then
      redis.call('ZADD', KEYS[2], deadline, member)
      n = n + 1
    end
  end
end
return n
"""
)

# KEYS: ready, delayed, leased, count, dead, deadinfo  ARGV: member, count, reason
_DEAD_LETTER = (
    _LUA_COMMON
    + """
local member = ARGV[1]
if redis.call('HGET', KEYS[4], member) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[3], member)
redis.call('ZREM', KEYS[1], member)
redis.call('ZREM', KEYS[2], member)
redis.call('ZADD', KEYS[5], num(now_ms()), member)
redis.call('HSET', KEYS[6], member, ARGV[3])
return 1
"""
)

# KEYS: ready, count, dead, deadinfo, notify  ARGV: members
_REPLAY = (
    _LUA_COMMON
    + """
local n = 0
for _, member in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[3], member) == 1 then
    redis.call('HDEL', KEYS[4], member)
    redis.call('HSET', KEYS[2], member, 0)
    redis.call('ZADD', KEYS[1], ready_score(member), member)
    n = n + 1
  end
end
if n > 0 and redis.call('LLEN', KEYS[5]) == 0 then redis.call('RPUSH', KEYS[5], '1') end
return n
"""
)

# KEYS: hash keys to clean (msg, count[, deadinfo]), then the sorted sets to empty
# ARGV: number of hash keys
_PURGE = """
local nh = tonumber(ARGV[1])
local n = 0
for z = nh + 1, #KEYS do
  local members = redis.call('ZRANGE', KEYS[z], 0, -1)
  for _, member in ipairs(members) do
    for h = 1, nh do redis.call('HDEL', KEYS[h], member) end
  end
  n = n + #members
  redis.call('DEL', KEYS[z])
end
return n
"""


class _QueueKeys:
    """The Redis key names of one queue (see the module docstring)."""

    __slots__ = ("count", "dead", "deadinfo", "delayed", "leased", "msg", "notify", "ready", "seq")

    def __init__(self, namespace: str, queue: str) -> None:
        base = f"{namespace}:{{{queue}}}:"
        self.ready = base + "ready"
        self.delayed = base + "delayed"
        self.leased = base + "leased"
        self.msg = base + "msg"
        self.count = base + "count"
        self.notify = base + "notify"
        self.seq = base + "seq"
        self.dead = base + "dead"
        self.deadinfo = base + "deadinfo"


class RedisSubscription(Subscription):
    """A pub/sub listener on one broadcast channel, on its own connection."""

    def __init__(self, pubsub: PubSub, channel: str, url: str, confirm_timeout: float) -> None:
        self._pubsub = pubsub
        self._channel = channel
        self._url = url
        self._lock = threading.Lock()
        self._closed = False
        with translate_errors(url, f"subscribe to {channel!r}"):
            pubsub.subscribe(channel)
            # Return only once Redis confirmed: from then on nothing broadcast is missed.
            deadline = time.monotonic() + confirm_timeout
            while True:
                reply = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if reply and reply["type"] == "subscribe":
                    break
                if time.monotonic() >= deadline:
                    raise BrokerError(f"Redis at {redact(url)} did not confirm SUBSCRIBE")

    def get(self, timeout: float) -> bytes | None:
        """The next broadcast body, waiting up to ``timeout`` seconds, else ``None``
        (at once when closed, also by another thread while this one waits)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._closed:
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    reply = self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=remaining
                    )
                except Exception as exc:
                    if self.closed:  # closed under us: the read broke, nothing is lost
                        return None
                    if not isinstance(exc, redis.RedisError | OSError):
                        raise
                    with translate_errors(self._url, f"read broadcasts on {self._channel!r}"):
                        raise
                if reply is not None and reply["type"] == "message":
                    data: bytes = reply["data"]
                    return data
                if remaining <= 0:
                    return None
        return None

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Unsubscribe and release the connection; idempotent, and safe from any
        thread (a ``get`` waiting in another thread returns ``None``)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(redis.RedisError, OSError):
            self._pubsub.close()


class RedisTransport(Transport):
    """The Redis broker plugin (``redis://``, ``rediss://``, ``redis+sentinel://``)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=True,
        max_delay=None,
        max_message_size=MAX_MESSAGE_SIZE,
        broadcast=True,
        lease="timeout",
        extend_lease=True,
        dead_letter=True,
        inspect_scheduled=True,
        may_duplicate=False,
        transactional_enqueue=False,
        durable=True,
    )

    #: Most messages one publish script carries; bigger batches are split (pipelined).
    publish_chunk = 500

    def __init__(self, url: str, **options: Any) -> None:
        options = {**options, **query_options(url)}
        super().__init__(url, **options)
        if self.visibility_timeout <= 0:
            raise ConfigurationError(
                f"visibility_timeout must be positive seconds, got {self.visibility_timeout}"
            )
        unknown = set(options) - _KNOWN_OPTIONS - _IGNORED_CELERY_OPTIONS
        if unknown:
            logger.warning(
                "Redis transport %s ignores unknown option(s): %s",
                redact(url),
                ", ".join(sorted(unknown)),
            )
        self.namespace = str(options.get("namespace", options.get("global_keyprefix", "polyq")))
        self.namespace = self.namespace.rstrip(":_") or "polyq"
        client, self.db = connect(url, options)
        # Typed loosely on purpose: redis-py annotates every reply as a union of all
        # shapes, while with decode_responses=False ours are known (bytes, ints, lists).
        self._client: Any = client
        socket_timeout = float(options.get("socket_timeout", 10.0))
        # Every BLPOP must return well before the socket times out.
        self._max_block = max(0.05, socket_timeout / 2)
        self._lease_ms = int(self.visibility_timeout * 1000)
        self._queues_key = f"{self.namespace}:queues"
        self._rotation = itertools.count()
        self._checked_server = False
        self._keys: dict[str, _QueueKeys] = {}
        self._now_keys: dict[str, list[str]] = {}
        self._listed: set[str] = set()
        self._subscriptions: weakref.WeakSet[RedisSubscription] = weakref.WeakSet()
        # Publishing runs EVALSHA on connections of our own (see _evalsha) unless a
        # max_connections cap is set, which only the pool can enforce.
        self._own_connections = "max_connections" not in options
        self._idle: list[Connection] = []
        self._idle_pid = os.getpid()
        register = self._client.register_script
        self._publish = register(_PUBLISH)
        self._publish_now = register(_PUBLISH_NOW)
        self._receive = register(_RECEIVE)
        self._ack = register(_ACK)
        self._nack = register(_NACK)
        self._extend = register(_EXTEND)
        self._dead_letter = register(_DEAD_LETTER)
        self._replay = register(_REPLAY)
        self._purge = register(_PURGE)

    def _errors(self, what: str) -> translate_errors:
        return translate_errors(self.url, what)

    def _k(self, queue: str) -> _QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = self._keys[queue] = _QueueKeys(self.namespace, queue)
        return keys

    # -- producing -------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Store ``messages`` with one script per queue and chunk, pipelined."""
        if kwargs.get("connection") is not None:
            raise ConfigurationError(
                "the Redis transport cannot join a database transaction (connection=...)"
            )
        if len(messages) == 1:  # the common .delay(): no grouping to do
            message = messages[0]
            args: list[Any]
            with self._errors("publish a message"):
                if message.delay > 0:
                    args = [message.queue, 0, 1, *self._publish_args(message)]
                    self._evalsha(self._publish, self._publish_keys(message.queue, args), args)
                    return
                queue = message.queue
                args = [queue, 0, min(9, max(0, int(message.priority))), _pack(message)]
                keys = self._now_keys.get(queue)
                if keys is None:
                    k = self._k(queue)
                    keys = [k.ready, k.msg, k.seq, k.notify, self._queues_key]
                    self._now_keys[queue] = keys
                if queue not in self._listed:
                    self._listed.add(queue)
                    args[1] = 1
                self._evalsha(self._publish_now, keys, args)
            return
        by_queue: dict[str, list[Any]] = {}
        for message in messages:
            by_queue.setdefault(message.queue, []).extend(self._publish_args(message))
        calls: list[tuple[list[str], list[Any]]] = []
        step = self.publish_chunk * 3
        for queue, triples in by_queue.items():
            for start in range(0, len(triples), step):
                chunk = triples[start : start + step]
                args = [queue, 0, len(chunk) // 3, *chunk]
                calls.append((self._publish_keys(queue, args), args))
        if not calls:
            return
        with self._errors(f"publish {len(messages)} messages"):
            self._run([(self._publish, keys, args) for keys, args in calls])

    def _run(self, calls: Sequence[tuple[Script, list[str], list[Any]]]) -> list[Any]:
        """Run scripts in one round trip. (redis-py's pipelined scripts would cost an
        extra ``SCRIPT EXISTS`` round trip each time; here a script missing after a
        server restart is loaded and re-run only when Redis says so.)"""
        if len(calls) == 1:
            script, keys, args = calls[0]
            return [script(keys=keys, args=args)]
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        results: list[Any] = pipe.execute(raise_on_error=False)
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):  # it did not run: safe to run now
                script, keys, args = calls[i]
                results[i] = script(keys=keys, args=args)
            elif isinstance(result, Exception):
                raise result
        return results

    def _evalsha(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` in one round trip on an idle connection of this transport.

        redis-py's own command path checks a connection out of its pool for every
        command (a lock, a ``poll()`` system call to look for stray data, metrics)
        and back in: more client time than the round trip itself for a small
        publish. A connection here goes back on the idle list only with its reply
        read in full, or disconnected (it reconnects on next use), so it never
        carries stray data. Connection errors are retried as the client's are (the
        ``retries`` option); a script missing after a server restart is loaded and
        run once more (it did not run).
        """
        if not self._own_connections:
            return script(keys=keys, args=args)
        if self._idle_pid != os.getpid():  # forked: never share the parent's sockets
            self._idle = []
            self._idle_pid = os.getpid()
        idle = self._idle
        try:
            conn = idle.pop()
        except IndexError:
            pool = self._client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)

        def call(*command: Any) -> Any:
            return conn.retry.call_with_retry(
                lambda: _roundtrip(conn, command), lambda _error: conn.disconnect()
            )

        try:
            try:
                return call("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                call("SCRIPT", "LOAD", script.script)
                return call("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.ResponseError:
            raise  # a whole error reply was read: the connection is clean
        except BaseException:
            conn.disconnect()
            raise
        finally:
            idle.append(conn)

    @staticmethod
    def _publish_args(message: OutgoingMessage) -> tuple[int, int, bytes]:
        priority = min(9, max(0, int(message.priority)))
        return priority, max(0, round(message.delay * 1000)), _pack(message)

    def _publish_keys(self, queue: str, args: list[Any]) -> list[str]:
        """The script's keys; asks it to list ``queue`` the first time this
        instance publishes there (one ``SADD`` fewer per message after that)."""
        if queue not in self._listed:
            self._listed.add(queue)
            args[1] = 1
        k = self._k(queue)
        return [k.ready, k.delayed, k.msg, k.seq, k.notify, self._queues_key]

    # -- consuming -------------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Lease up to ``max_messages`` in one script call; block on the queues'
        ``notify`` lists (never past ``wait``) when none is ready."""
        if not queues or max_messages <= 0:
            return []
        if not self._checked_server:
            self._checked_server = True
            self.check_server()
        # Rotate which queue is served first, so none is starved.
        shift = next(self._rotation) % len(queues)
        order = list(queues[shift:]) + list(queues[:shift])
        keys: list[str] = []
        for queue in order:
            k = self._k(queue)
            keys += [k.ready, k.delayed, k.leased, k.msg, k.count, k.notify]
        notify = keys[5::6]
        args = [len(order), max_messages, self._lease_ms]
        deadline = time.monotonic() + max(0.0, wait)
        what = f"receive from {', '.join(order)}"
        with self._errors(what):
            reply = self._receive(keys=keys, args=args)
        while len(reply) <= 2:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            block = min(remaining, self._max_block)
            next_due, now = int(reply[0]), int(reply[1])
            if next_due >= 0:
                block = min(block, max(0.0, (next_due - now) / 1000 + 0.002))
            if block < 0.01:  # BLPOP's 0 means "forever": never send it
                with self._errors(what):
                    reply = self._receive(keys=keys, args=args)
                continue
            # BLPOP and the receive script travel together: Redis runs the script
            # the moment BLPOP returns, so a wake-up costs no extra round trip.
            with self._errors(what):
                pipe = self._client.pipeline(transaction=False)
                pipe.blpop(notify, timeout=round(block, 3))
                pipe.evalsha(self._receive.sha, len(keys), *keys, *args)
                _, reply = pipe.execute(raise_on_error=False)
                if isinstance(reply, NoScriptError):
                    reply = self._receive(keys=keys, args=args)
                elif isinstance(reply, Exception):
                    raise reply
        return self._deliveries(order, reply)

    def _deliveries(self, order: Sequence[str], reply: list[Any]) -> list[Delivery]:
        deliveries = []
        for i in range(2, len(reply), 4):
            member = reply[i + 1].decode()
            message_id, headers, body = _unpack(reply[i + 3])
            deliveries.append(
                Delivery(
                    queue=order[int(reply[i])],
                    message_id=message_id,
                    body=body,
                    headers=headers,
                    delivery_count=int(reply[i + 2]),
                    receipt=(member, int(reply[i + 2])),
                    priority=_priority_of(member),
                )
            )
        return deliveries

    @staticmethod
    def _by_queue(deliveries: Sequence[Delivery]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for delivery in deliveries:
            member, count = delivery.receipt
            grouped.setdefault(delivery.queue, []).extend((member, str(count)))
        return grouped

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages; one script per queue, pipelined into one round trip."""
        grouped = self._by_queue(deliveries)
        if not grouped:
            return
        with self._errors(f"ack {len(deliveries)} message(s)"):
            self._run(
                [
                    (self._ack, [k.ready, k.delayed, k.leased, k.msg, k.count], args)
                    for k, args in ((self._k(q), args) for q, args in grouped.items())
                ]
            )

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Return the message to ``ready`` (or ``delayed`` for ``delay`` seconds)."""
        member, count = delivery.receipt
        k = self._k(delivery.queue)
        delay_ms = max(0, round(delay * 1000))
        with self._errors(f"nack message {delivery.message_id}"):
            self._nack(
                keys=[k.ready, k.delayed, k.leased, k.count, k.notify],
                args=[member, str(count), delay_ms],
            )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to its queue's dead letters with ``reason``."""
        member, count = delivery.receipt
        k = self._k(delivery.queue)
        with self._errors(f"dead-letter message {delivery.message_id}"):
            self._dead_letter(
                keys=[k.ready, k.delayed, k.leased, k.count, k.dead, k.deadinfo],
                args=[member, str(count), reason],
            )

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Push every held lease to ``visibility_timeout`` from now (server clock)."""
        grouped = self._by_queue(deliveries)
        if not grouped:
            return
        with self._errors(f"extend the lease of {len(deliveries)} message(s)"):
            self._run(
                [
                    (self._extend, [k.ready, k.leased, k.count], [self._lease_ms, *args])
                    for k, args in ((self._k(q), args) for q, args in grouped.items())
                ]
            )

    # -- queues ----------------------------------------------------------------------

    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (not leased ones)."""
        k = self._k(queue)
        with self._errors(f"purge queue {queue!r}"):
            return int(self._purge(keys=[k.msg, k.count, k.ready, k.delayed], args=[2]))

    def size(self, queue: str) -> int:
        """Ready + delayed + leased messages of ``queue``."""
        k = self._k(queue)
        with self._errors(f"read the size of queue {queue!r}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.zcard(k.ready).zcard(k.delayed).zcard(k.leased)
            return sum(int(n) for n in pipe.execute())

    def queues(self) -> list[str]:
        """Every queue ever published to under this namespace and database."""
        with self._errors("list queues"):
            return sorted(m.decode() for m in self._client.smembers(self._queues_key))

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first."""
        if limit <= 0:
            return []
        k = self._k(queue)
        with self._errors(f"list scheduled messages of {queue!r}"):
            entries = self._client.zrange(k.delayed, 0, limit - 1, withscores=True)
            members = [m for m, _ in entries]
            payloads = self._client.hmget(k.msg, members) if members else []
        found = []
        for (member, due), payload in zip(entries, payloads, strict=True):
            if payload is None:
                continue
            message_id, headers, _ = _unpack(payload)
            found.append(
                ScheduledMessage(
                    queue=queue,
                    message_id=message_id,
                    headers=headers,
                    eta=float(due) / 1000,
                    priority=_priority_of(member.decode()),
                )
            )
        return found

    # -- dead letters ----------------------------------------------------------------

    def _dead(self, queue: str, limit: int | None) -> list[DeadLetter]:
        """Up to ``limit`` dead letters (all when ``None``), oldest first."""
        if limit is not None and limit <= 0:
            return []
        k = self._k(queue)
        stop = -1 if limit is None else limit - 1
        with self._errors(f"read the dead letters of {queue!r}"):
            entries = self._client.zrange(k.dead, 0, stop, withscores=True)
            members = [m for m, _ in entries]
            if not members:
                return []
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(k.msg, members).hmget(k.deadinfo, members)
            payloads, reasons = pipe.execute()
        letters = []
        for (member, failed), payload, reason in zip(entries, payloads, reasons, strict=True):
            if payload is None:
                continue
            message_id, headers, body = _unpack(payload)
            letters.append(
                DeadLetter(
                    queue=queue,
                    message_id=message_id,
                    body=body,
                    headers=headers,
                    reason=(reason or b"").decode(),
                    failed_at=float(failed) / 1000,
                    receipt=member.decode(),
                )
            )
        return letters

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue``, oldest first."""
        return self._dead(queue, limit)

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Put dead letters back in ``ready`` with a fresh delivery count."""
        wanted = None if message_ids is None else set(message_ids)
        members = [
            letter.receipt
            for letter in self._dead(queue, None)
            if wanted is None or letter.message_id in wanted
        ]
        if not members:
            return 0
        k = self._k(queue)
        with self._errors(f"replay dead letters of {queue!r}"):
            return int(
                self._replay(keys=[k.ready, k.count, k.dead, k.deadinfo, k.notify], args=members)
            )

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` for good."""
        k = self._k(queue)
        with self._errors(f"purge dead letters of {queue!r}"):
            return int(self._purge(keys=[k.msg, k.count, k.deadinfo, k.dead], args=[3]))

    # -- broadcast -------------------------------------------------------------------

    def _channel(self, channel: str) -> str:
        return f"{self.namespace}:{self.db}:broadcast:{channel}"

    def broadcast(self, channel: str, body: bytes) -> None:
        """``PUBLISH`` on the namespaced channel (fire and forget)."""
        with self._errors(f"broadcast on {channel!r}"):
            self._client.publish(self._channel(channel), body)

    def subscribe(self, channel: str) -> RedisSubscription:
        """Listen on ``channel``; returns once Redis confirmed the subscription."""
        subscription = RedisSubscription(
            self._client.pubsub(), self._channel(channel), self.url, self._max_block * 2
        )
        self._subscriptions.add(subscription)
        return subscription

    # -- lifecycle -------------------------------------------------------------------

    def check_server(self) -> None:
        """Log a warning when the server's eviction policy can delete queue keys.

        Called by the first ``receive`` (that is, at worker start). Managed Redis
        services often deny ``CONFIG``; the check is then skipped quietly.
        """
        try:
            reply = self._client.config_get("maxmemory-policy")
        except redis.ResponseError:
            logger.debug("CONFIG GET denied by %s; eviction policy not checked", self.describe())
            return
        except redis.RedisError as exc:
            logger.debug("could not check the eviction policy of %s: %s", self.describe(), exc)
            return
        decoded = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in reply.items()
        }
        policy = decoded.get("maxmemory-policy", "")
        if policy.startswith("allkeys"):
            logger.warning(
                "Redis at %s has maxmemory-policy=%s: under memory pressure it can evict "
                "queue keys and lose messages. Use noeviction (or a volatile-* policy) for "
                "the broker database.",
                self.describe(),
                policy,
            )

    def close(self) -> None:
        """Close open subscriptions and the connection pool; idempotent."""
        for subscription in list(self._subscriptions):
            subscription.close()
        idle, self._idle = self._idle, []
        if self._idle_pid == os.getpid():
            for conn in idle:
                with contextlib.suppress(redis.RedisError, OSError):
                    conn.disconnect()
        with contextlib.suppress(redis.RedisError):
            self._client.close()
            self._client.connection_pool.disconnect()

    def describe(self) -> str:
        """``redis://host:port/db`` with credentials redacted, and the namespace."""
        return f"{redact(self.url)} (namespace {self.namespace!r})"

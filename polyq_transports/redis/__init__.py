"""The Redis transport (``redis://``, ``rediss://``, ``redis+sentinel://``).

Start at :mod:`.transport` (the contract's methods); ``docs/design/redis.md`` says
why queues are sorted sets driven by Lua scripts, ``docs/brokers.md`` how to set
it up. ``connect`` is re-exported from :mod:`polyq_clients.redis`, its home, for
code that imported it from here.
"""

from polyq_clients.redis import connect
from polyq_transports.redis.broadcast import RedisSubscription
from polyq_transports.redis.transport import RedisTransport

__all__ = ["RedisSubscription", "RedisTransport", "connect"]

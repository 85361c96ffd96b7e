"""The transport's Lua scripts: read from ``lua/*.lua`` once at import, registered
on a client by :class:`Scripts`, which also runs several in one round trip.

Each operation on a queue is one script, so no crash between two commands can lose
a message; ``docs/design/redis.md`` explains why, each ``.lua`` file what it does.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

__all__ = ["Scripts"]

_LUA = resources.files("polyq_transports.redis").joinpath("lua")


def _source(name: str) -> str:
    return _LUA.joinpath(f"{name}.lua").read_text(encoding="utf-8")


# The prelude (now_ms, num, ready_score) goes in front of the scripts that call it;
# the others run without it, since its functions are defined anew on every call.
_WITH_PRELUDE = ("publish", "receive", "nack", "extend", "dead_letter", "replay")
_WITHOUT_PRELUDE = ("publish_now", "ack", "purge")
_COMMON = _source("common")
_SOURCES = {name: _COMMON + _source(name) for name in _WITH_PRELUDE} | {
    name: _source(name) for name in _WITHOUT_PRELUDE
}


class Scripts:
    """Every script of the transport, registered on one client. A ``Script`` knows
    its SHA and source: it runs by ``EVALSHA`` and is loaded again when Redis lost
    it (after a restart)."""

    def __init__(self, client: redis.Redis) -> None:
        # Typed loosely on purpose, as in the transport: redis-py's reply types are
        # unions of every shape.
        self._client: Any = client
        register = client.register_script
        self.publish: Script = register(_SOURCES["publish"])
        self.publish_now: Script = register(_SOURCES["publish_now"])
        self.receive: Script = register(_SOURCES["receive"])
        self.ack: Script = register(_SOURCES["ack"])
        self.nack: Script = register(_SOURCES["nack"])
        self.extend: Script = register(_SOURCES["extend"])
        self.dead_letter: Script = register(_SOURCES["dead_letter"])
        self.replay: Script = register(_SOURCES["replay"])
        self.purge: Script = register(_SOURCES["purge"])

    def run(self, calls: Sequence[tuple[Script, list[str], list[Any]]]) -> list[Any]:
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

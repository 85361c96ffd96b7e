"""``jsonfile://``: polyq results in one JSON file (one host; an example plugin).

URL: ``jsonfile:///absolute/path/results.json``. Every call takes an exclusive
``flock`` on ``<path>.lock``, reads the file, and rewrites it atomically when it
changed something, so processes on one host share it safely. Slow on purpose:
short to read. ``wait`` is the base class's polling.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from polyq.backend import BackendCapabilities, ResultBackend
from polyq.exceptions import ConfigurationError


class JSONFileBackend(ResultBackend):
    """Values and sets in one JSON file; see the module docstring."""

    # Every call rewrites the file: chords stay small (1,000 header tasks, the minimum).
    capabilities = BackendCapabilities(push_wait=False, durable=True, max_chord_size=1_000)

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.path = urlsplit(url).path
        if not self.path.startswith("/"):
            raise ConfigurationError(f"{url}: write jsonfile:///absolute/path/results.json")

    @contextmanager
    def _store(self) -> Iterator[dict[str, Any]]:
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            try:
                with open(self.path) as f:
                    data = json.load(f)
            except FileNotFoundError:
                data = {"values": {}, "sets": {}}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                with open(self.path + ".tmp", "w") as f:
                    json.dump(data, f)
                    f.flush()
                    os.fsync(f.fileno())  # durable once set() returns
                os.replace(self.path + ".tmp", self.path)

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        return None if ttl is None else time.time() + ttl

    @staticmethod
    def _live(entry: list[Any] | None) -> bool:
        return entry is not None and (entry[1] is None or entry[1] > time.time())

    def get(self, key: str) -> bytes | None:
        with self._store() as data:
            entry = data["values"].get(key)
            return base64.b64decode(entry[0]) if self._live(entry) else None

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._store() as data:
            data["values"][key] = [base64.b64encode(value).decode(), self._expiry(ttl)]

    def delete(self, keys: Sequence[str]) -> None:
        with self._store() as data:
            for key in keys:
                data["values"].pop(key, None)
                data["sets"].pop(key, None)

    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        with self._store() as data:
            entry = data["sets"].get(key)
            if not self._live(entry):
                entry = data["sets"][key] = [[], None]
            if member not in entry[0]:
                entry[0].append(member)
            if ttl is not None:
                entry[1] = self._expiry(ttl)
            return len(entry[0])

    def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        with self._store() as data:
            if self._live(data["values"].get(key)):
                return False
            data["values"][key] = [base64.b64encode(value).decode(), self._expiry(ttl)]
            return True

    def keys(self, prefix: str, limit: int = 1000) -> list[str]:
        with self._store() as data:
            live = [k for k, e in data["values"].items() if k.startswith(prefix) and self._live(e)]
            return sorted(live)[:limit]

    def cleanup(self) -> int:
        with self._store() as data:
            removed = 0
            for table in ("values", "sets"):
                for key in [k for k, e in data[table].items() if not self._live(e)]:
                    del data[table][key]
                    removed += 1
            return removed

"""The task ids this worker knows are revoked: loaded from the result backend
(durable revokes) and added to by ``revoke`` commands."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from polyq.control import REVOKED_PREFIX

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["Revocations"]

logger = logging.getLogger("polyq.worker")


class Revocations:
    """A set of revoked task ids (membership is what the consumer asks, per message)."""

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._ids

    def add(self, ids: Iterable[str]) -> None:
        """Remember ``ids`` as revoked."""
        self._ids.update(ids)

    def ids(self) -> list[str]:
        """Every revoked id known, sorted."""
        return sorted(self._ids)

    def load(self, app: Polyq) -> None:
        """Add the durable revokes stored in ``app``'s result backend."""
        try:
            keys = app.backend.keys(REVOKED_PREFIX, 100000)
        except Exception:
            logger.exception("could not load revoked task ids")
            return
        self._ids.update(k[len(REVOKED_PREFIX) :] for k in keys)

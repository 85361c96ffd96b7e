"""What a plugin can do: the capability declarations of transports and result backends.

Each plugin declares its capabilities as a class attribute, every field spelled out.
The defaults claim nothing (no priority, no native delay, no dead letters, not
durable...), so a plugin that forgets a field is treated as lacking the feature
rather than trusted with one it does not have. The core adapts to what is declared
and the conformance suite (:mod:`polyq.testing.conformance`) skips only what is
declared absent, and checks everything declared present.

Both classes are also importable from :mod:`polyq.transport` and :mod:`polyq.backend`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from polyq.exceptions import PolyqError

__all__ = ["BackendCapabilities", "Capabilities", "UnsupportedCapability"]


class UnsupportedCapability(PolyqError, NotImplementedError):
    """A plugin was asked for something its capabilities declare absent (the message
    names the capability). A :class:`NotImplementedError` too, for callers that
    catch that."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a transport can do; the core adapts to it and the conformance suite
    skips only what is declared absent (and checks what is declared present).

    Every default claims nothing: declare each field explicitly.
    """

    #: Honours ``priority`` 0..9, higher first.
    priority: bool = False
    #: Longest delay the broker holds natively, in seconds: ``0`` (the default)
    #: means no native delay, ``None`` unbounded. The core asks for at most this
    #: much and the worker holds or re-delays the rest until the message is due.
    max_delay: float | None = 0.0
    #: Largest body + headers the broker accepts, in bytes; ``None`` if unbounded.
    max_message_size: int | None = None
    #: ``broadcast``/``subscribe`` work (control commands and events).
    broadcast: bool = False
    #: ``"timeout"`` (the default): a lease (visibility timeout) that ends after
    #: ``visibility_timeout`` unless extended. ``"connection"``: held while the
    #: consumer's connection lives.
    lease: Literal["timeout", "connection"] = "timeout"
    #: ``extend_lease`` pushes the end of a held lease forward.
    extend_lease: bool = False
    #: ``dead_letter`` keeps the message with its reason, readable by ``dead_letters``.
    dead_letter: bool = False
    #: ``scheduled`` lists delayed messages waiting in the broker.
    inspect_scheduled: bool = False
    #: The broker may deliver a message twice without any failure (SQS standard).
    may_duplicate: bool = False
    #: ``publish(..., connection=...)`` joins the caller's database transaction.
    transactional_enqueue: bool = False
    #: ``publish``, once returned, survives a broker restart (where the broker persists).
    durable: bool = False
    #: ``size`` counts exactly, at once; without it the count is the broker's
    #: approximation (SQS's ``ApproximateNumberOfMessages``), which the dashboard says.
    exact_size: bool = False


@dataclasses.dataclass(frozen=True)
class BackendCapabilities:
    """What a result backend can do beyond the contract's minimum.

    Every default claims nothing: declare each field explicitly.
    """

    #: ``wait`` is woken by the store (pub/sub, LISTEN/NOTIFY) rather than polling.
    push_wait: bool = False
    #: Values written survive a restart of the store.
    durable: bool = False
    #: The most header tasks a chord may have on this backend: its bookkeeping
    #: (``add_to_set`` of every member, ``get_many`` of every result, the stored
    #: chord record) works up to this size. ``None``: no limit of the backend's own
    #: (the conformance suite proves 100,000). The default, 1,000, is the contract's
    #: minimum: every backend must pass the suite at that size. Sending a larger chord
    #: fails at once (``ChordError``) before anything is sent.
    max_chord_size: int | None = 1_000

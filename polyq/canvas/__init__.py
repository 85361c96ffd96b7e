"""Signatures and workflows: ``signature``, ``chain``, ``group``, ``chord``,
``chunks``, ``xmap`` and ``xstarmap``, with ``link`` / ``link_error`` callbacks.

- :mod:`polyq.canvas.signatures`: ``Signature`` (a task call as data) and sending one;
- :mod:`polyq.canvas.primitives`: ``chain``, ``group``, ``chord``, ``chunks``;
- :mod:`polyq.canvas.maps`: ``xmap``, ``xstarmap``;
- :mod:`polyq.canvas.runtime`: what the worker does after a task of a workflow ends;
- :mod:`polyq.canvas.keys`: backend keys and message options of the canvas.

How workflows run (chords exactly once, never hung): docs/design/canvas.md.
"""

from polyq.canvas.keys import (
    CHORD_FAILED_PREFIX,
    CHORD_FIRED_PREFIX,
    CHORD_MEMBERS_PREFIX,
    CHORD_PREFIX,
    ONCE_PREFIX,
)
from polyq.canvas.maps import xmap, xstarmap
from polyq.canvas.primitives import chain, chord, chunks, group
from polyq.canvas.runtime import (
    claim_once,
    on_failure,
    on_failure_outside_task,
    on_success,
)
from polyq.canvas.signatures import Signature, from_dict, maybe_signature, signature

__all__ = [
    "CHORD_FAILED_PREFIX",
    "CHORD_FIRED_PREFIX",
    "CHORD_MEMBERS_PREFIX",
    "CHORD_PREFIX",
    "ONCE_PREFIX",
    "Signature",
    "chain",
    "chord",
    "chunks",
    "claim_once",
    "from_dict",
    "group",
    "maybe_signature",
    "on_failure",
    "on_failure_outside_task",
    "on_success",
    "signature",
    "xmap",
    "xstarmap",
]

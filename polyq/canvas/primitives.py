"""The workflow primitives: ``chain``, ``group``, ``chord`` and ``chunks`` (how each is sent
and applied eagerly); see docs/design/canvas.md for how they run on workers."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from polyq import states
from polyq.canvas.fields import check_chord_size
from polyq.canvas.keys import CHORD_PREFIX, FIRST_ONLY, GROUP_KEYS
from polyq.canvas.maps import xstarmap
from polyq.canvas.signatures import Signature, as_list, from_dict, plain, to_signature
from polyq.exceptions import ChordError
from polyq.message import new_id
from polyq.result import EagerResult, GroupResult, encode_record

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["apply_step", "chain", "chord", "chunks", "group"]


def expand(sig: Signature) -> Signature:
    # chunks stand for a group; expanding early lets ids be frozen like any group's.
    return sig.group() if isinstance(sig, chunks) else sig


def items(tasks: tuple[Any, ...]) -> list[Any]:
    # chain(a, b) and chain([a, b]) (or any iterable of signatures) are the same.
    if len(tasks) == 1 and not isinstance(tasks[0], dict) and isinstance(tasks[0], Iterable):
        return list(tasks[0])
    return list(tasks)


def set_root_parent(result: Any, parent: Any) -> None:
    # The first result of a step (a chord's header, or the step itself) hangs off
    # the previous step, so ``parent`` links walk the whole workflow.
    node = result
    seen = 0
    while getattr(node, "parent", None) is not None and seen < 10000:
        node = node.parent
        seen += 1
    node.parent = parent


def spread(options: dict[str, Any], into: Signature) -> None:
    # Options given to a whole chain (queue, priority...) reach each of its
    # steps; a step's own options win.
    for key, value in options.items():
        if key not in FIRST_ONLY and key not in ("link", "link_error"):
            into["options"].setdefault(key, value)


#: Options a group or chord passes to each member as they are (lineage, the claim).
DIRECT = ("parent_id", "root_id", "once")


def share(options: dict[str, Any], members: list[Signature]) -> dict[str, Any]:
    """Give a group's options to its members (a member's own win); return the
    options every member is sent with as they are."""
    skip = {"task_id", "link", "link_error", *GROUP_KEYS, *DIRECT}
    for member in members:
        for key, value in options.items():
            if key not in skip:
                member["options"].setdefault(key, value)
    return {k: options[k] for k in DIRECT if k in options}


def apply_step(
    sig: Signature, args: Sequence[Any], rest: list[Signature], opts: dict[str, Any]
) -> Any:
    """Send ``sig`` (with ``args`` prepended) so that ``rest`` follows it, as a chain."""
    if isinstance(sig, chunks):
        sig = sig.group()
    if isinstance(sig, group | chord):
        # Their own group id is frozen in their options; the caller's is not theirs.
        opts = {k: v for k, v in opts.items() if k not in GROUP_KEYS}
    if isinstance(sig, group):
        if rest:
            body = rest[0] if len(rest) == 1 else chain(*rest, app=sig.bound_app)
            return chord(sig, body, app=sig.bound_app).apply_async(args, **opts)
        return sig.apply_async(args, **opts)
    if isinstance(sig, chord):
        if rest:
            sig = chord(sig.header, chain(sig.body, *rest, app=sig.bound_app), app=sig.bound_app)
        return sig.apply_async(args, **opts)
    if isinstance(sig, chain):
        return chain(*sig.tasks, *rest, app=sig.bound_app).apply_async(args, **opts)
    if rest:
        opts = {**opts, "chain": [plain(s) for s in reversed(rest)]}
    return sig.apply_async(args, **opts)


class chain(Signature):
    """Run tasks one after another, each receiving the previous one's result.

    ``chain(a.s(), b.s())`` or ``a.s() | b.s()``. ``.get()`` on its result waits
    for the last step; ``.parent`` walks back to the first.
    """

    kind = "chain"

    def __init__(self, *tasks: Any, app: Polyq | None = None, **options: Any) -> None:
        flat: list[Signature] = []
        for t in items(tasks):
            sig = expand(to_signature(t, app))
            if isinstance(sig, chain):
                flat.extend(sig.tasks)
            else:
                flat.append(sig)
        super().__init__(
            "polyq.chain",
            options=options,
            subtask_type="chain",
            app=app or next((s.bound_app for s in flat if s.bound_app), None),
        )
        self["tasks"] = flat

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = super()._rebuild(data, app)
        sig["tasks"] = [from_dict(t, app) for t in data.get("tasks") or ()]
        return sig

    @property
    def tasks(self) -> list[Signature]:
        """The steps, in order."""
        return cast(list[Signature], self["tasks"])

    def prepend_args(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        if self.tasks:
            self.tasks[0].prepend_args(args, kwargs)

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with the last step's result."""
        return self.tasks[-1].link(callback)

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` when any step fails."""
        sig = to_signature(errback, self.bound_app)
        for t in self.tasks:
            t.link_error(sig)
        return sig

    on_error = link_error

    def freeze(self, _id: str | None = None) -> Any:
        """Assign every step's id; return the last step's result (parents linked)."""
        prev: Any = None
        for index, t in enumerate(self.tasks):
            result = t.freeze(_id if index == len(self.tasks) - 1 else None)
            if prev is not None:
                set_root_parent(result, prev)
            prev = result
        return prev

    def final_tasks(self) -> list[Signature]:
        return self.tasks[-1].final_tasks()

    def all_tasks(self) -> Iterator[Signature]:
        for t in self.tasks:
            yield from t.all_tasks()

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the first step; the rest travel with it and follow its result."""
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run")
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        c = cast(chain, self.clone(args, kwargs))
        opts = {**c["options"], **options}
        for callback in as_list(opts.pop("link", None)):
            c.link(callback)
        for errback in as_list(opts.pop("link_error", None)):
            c.link_error(errback)
        result = c.freeze(opts.pop("task_id", None))
        for t in c.tasks:
            spread(opts, t)
        first = {k: v for k, v in opts.items() if k in FIRST_ONLY}
        apply_step(c.tasks[0], (), c.tasks[1:], first)
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run every step here, in order; stops at the first failure (returned)."""
        c = cast(chain, self.clone(args, kwargs))
        result: Any = None
        value: Any = None
        for index, t in enumerate(c.tasks):
            step = t.apply((value,) if index else (), **options)
            if result is not None:
                set_root_parent(step, result)
            result = step
            ok, value = eager_value(step)
            if not ok:
                return step
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with these arguments."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        return chain(*self.tasks, other, app=self.bound_app)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


def eager_value(result: Any) -> tuple[bool, Any]:
    try:
        return True, result.get(propagate=True)
    except Exception:
        return False, None


class group(Signature):
    """Run tasks in parallel; a :class:`~polyq.result.GroupResult` collects their
    results in order. Arguments given when applied go to every member."""

    kind = "group"

    def __init__(self, *tasks: Any, app: Polyq | None = None, **options: Any) -> None:
        sigs = [expand(to_signature(t, app)) for t in items(tasks)]
        super().__init__(
            "polyq.group",
            options=options,
            subtask_type="group",
            app=app or next((s.bound_app for s in sigs if s.bound_app), None),
        )
        self["tasks"] = sigs

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = super()._rebuild(data, app)
        sig["tasks"] = [from_dict(t, app) for t in data.get("tasks") or ()]
        return sig

    @property
    def tasks(self) -> list[Signature]:
        """The members."""
        return cast(list[Signature], self["tasks"])

    @property
    def id(self) -> str | None:
        """The group id, once frozen."""
        group_id = self["options"].get("group_id")
        return str(group_id) if group_id else None

    def prepend_args(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        for t in self.tasks:
            t.prepend_args(args, kwargs)

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with each member's result (use a chord for all at once)."""
        sig = to_signature(callback, self.bound_app)
        for t in self.tasks:
            t.link(sig)
        return sig

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` when any member fails."""
        sig = to_signature(errback, self.bound_app)
        for t in self.tasks:
            t.link_error(sig)
        return sig

    on_error = link_error

    def freeze(self, _id: str | None = None) -> GroupResult:
        """Assign the group id and every member's id; return the ``GroupResult``."""
        if _id:
            self["options"]["group_id"] = _id
        group_id = self["options"].setdefault("group_id", new_id())
        return GroupResult(group_id, [t.freeze() for t in self.tasks], app=self.app)

    def final_tasks(self) -> list[Signature]:
        return [f for t in self.tasks for f in t.final_tasks()]

    def all_tasks(self) -> Iterator[Signature]:
        for t in self.tasks:
            yield from t.all_tasks()

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send every member at once; return their ``GroupResult`` (saved)."""
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        g = cast(group, self.clone(args, kwargs))
        opts = {**g["options"], **options}
        for callback in as_list(opts.pop("link", None)):
            g.link(callback)
        for errback in as_list(opts.pop("link_error", None)):
            g.link_error(errback)
        result = g.freeze(opts.pop("group_id", None))
        direct = share(opts, g.tasks)
        result.save()
        size = len(g.tasks)
        for index, t in enumerate(g.tasks):
            member_opts = dict(direct)
            if not isinstance(t, group | chord | chunks):
                member_opts.update(group_id=result.id, group_index=index, group_size=size)
            apply_step(t, (), [], member_opts)
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Run every member here, one after another."""
        g = cast(group, self.clone(args, kwargs))
        group_id = g["options"].get("group_id") or new_id()
        opts = {k: v for k, v in options.items() if k not in GROUP_KEYS}
        return GroupResult(group_id, [t.apply(**opts) for t in g.tasks], app=self.app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with these arguments."""
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        return chain(self, other, app=self.bound_app)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"


def flatten_header(header: group) -> list[Signature]:
    members: list[Signature] = []
    for t in header.tasks:
        if isinstance(t, chunks):
            t = t.group()
        if isinstance(t, group):
            members.extend(flatten_header(t))
        else:
            members.append(t)
    return members


class chord(Signature):
    """A group (the header) whose results, in order, are passed as one list to a
    callback (the body) once every header task has succeeded.

    ``chord([add.s(i, i) for i in range(10)])(tsum.s())`` or
    ``chord(header, body).apply_async()``. The result is the body's; its
    ``parent`` is the header's ``GroupResult``.
    """

    kind = "chord"

    def __init__(
        self, header: Any, body: Any = None, app: Polyq | None = None, **options: Any
    ) -> None:
        head = header if isinstance(header, group) else group(header, app=app)
        super().__init__(
            "polyq.chord",
            options=options,
            subtask_type="chord",
            app=app or head.bound_app,
        )
        self["header"] = head
        self["body"] = expand(to_signature(body, app)) if body is not None else None

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = super()._rebuild(data, app)
        sig["header"] = from_dict(data["header"], app)
        sig["body"] = from_dict(data["body"], app) if data.get("body") else None
        return sig

    @property
    def header(self) -> group:
        """The tasks run in parallel."""
        return cast(group, self["header"])

    @property
    def body(self) -> Signature:
        """The callback."""
        body = self["body"]
        if body is None:
            raise ValueError("this chord has no body: call chord(header)(callback)")
        return cast(Signature, body)

    @property
    def id(self) -> str | None:
        """The id of the chord's result (the body's), once frozen."""
        return self.body.id if self["body"] is not None else None

    def prepend_args(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        self.header.prepend_args(args, kwargs)

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with the body's result."""
        return self.body.link(callback)

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` when a header task or the body fails."""
        return self.body.link_error(errback)

    on_error = link_error

    def freeze(self, _id: str | None = None) -> Any:
        """Assign every id; return the body's result (its parent is the header's)."""
        header_result = self.header.freeze()
        body_result = self.body.freeze(_id)
        set_root_parent(body_result, header_result)
        return body_result

    def final_tasks(self) -> list[Signature]:
        return self.body.final_tasks()

    def all_tasks(self) -> Iterator[Signature]:
        yield from self.header.all_tasks()
        yield from self.body.all_tasks()

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        body: Any = None,
        **options: Any,
    ) -> Any:
        """Store the chord's record and send the header tasks."""
        if body is not None:
            return chord(self.header, body, app=self.bound_app, **self["options"]).apply_async(
                args, kwargs, **options
            )
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        c = cast(chord, self.clone(args, kwargs))
        opts = {**c["options"], **options}
        for key in ("link", "link_error"):
            for cb in as_list(opts.pop(key, None)):
                getattr(c.body, key)(cb)
        result = c.freeze(opts.pop("task_id", None))
        for key in GROUP_KEYS:
            opts.pop(key, None)
        app = self.app
        group_id = str(c.header.id)
        members = flatten_header(c.header)
        header_result = GroupResult(group_id, [m.freeze() for m in members], app=app)
        if not members:
            c.body.apply_async(([],), **{k: v for k, v in opts.items() if k == "once"})
            return result
        check_chord_size(app.backend, len(members))
        for m in members:
            finals = m.final_tasks()
            if len(finals) != 1:
                raise ValueError(
                    f"chord header member {m!r} ends in a group; put that group in the "
                    "header itself, or end the member with a task"
                )
        record = {"body": plain(c.body), "results": [r.id for r in header_result.results]}
        app.backend.set(
            CHORD_PREFIX + group_id,
            encode_record(record, app.conf.task_serializer),
            ttl=app.result_ttl,
        )
        header_result.save()
        direct = share(opts, members)
        size = len(members)
        marker = {"id": group_id, "size": size}
        for index, m in enumerate(members):
            final = m.final_tasks()[0]
            final["options"]["chord"] = marker
            # The chord reads every header result: they must be stored.
            final["options"]["ignore_result"] = False
            member_opts = dict(direct)
            if not isinstance(m, chord):
                member_opts.update(group_id=group_id, group_index=index, group_size=size)
            apply_step(m, (), [], member_opts)
        return result

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        body: Any = None,
        **options: Any,
    ) -> Any:
        """Run the header here, then the body with its results (or fail it)."""
        c = cast(chord, self.clone(args, kwargs))
        if body is not None:
            c["body"] = to_signature(body, self.bound_app)
        header_result = c.header.apply(**options)
        try:
            values = header_result.get(propagate=True)
        except Exception as exc:
            body_id = c.body.freeze().id
            error = ChordError(f"a header task of chord {c.header.id} raised {exc!r}")
            for errback in as_list(c.body["options"].get("link_error")):
                to_signature(errback, self.bound_app).apply((body_id,))
            failed = EagerResult(self.app, body_id, states.FAILURE, error, None)
            failed.parent = header_result  # type: ignore[assignment]
            return failed
        result = c.body.apply((values,), **options)
        set_root_parent(result, header_result)
        return result

    def __call__(self, body: Any = None, **options: Any) -> Any:
        """``chord(header)(callback)``: send it with this body."""
        return self.apply_async((), body=body, **options)

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self['body']!r})"


def chunked(items: list[Any], n: int) -> Iterator[list[Any]]:
    source = iter(items)
    while True:
        part = list(itertools.islice(source, n))
        if not part:
            return
        yield part


class chunks(Signature):
    """Split ``it`` (argument tuples) into parts of ``n``, each run as one
    ``starmap`` task, in parallel: ``chunks(add.s(), zip(a, b), 10)``.

    Its result is a ``GroupResult`` whose ``get()`` is a list of lists.
    """

    kind = "chunks"

    def __init__(self, task: Any, it: Iterable[Any], n: int, app: Polyq | None = None) -> None:
        if int(n) < 1:
            raise ValueError(f"chunks needs a chunk size of at least 1, not {n!r}")
        sig = to_signature(task, app)
        super().__init__(
            "polyq.chunks",
            kwargs={"task": plain(sig), "it": [list(i) for i in it], "n": int(n)},
            subtask_type="chunks",
            app=app or sig.bound_app,
        )

    def group(self) -> group:
        """The group of ``starmap`` tasks this stands for."""
        kw = self["kwargs"]
        task = from_dict(kw["task"], self.bound_app)
        parts = [xstarmap(task, part, app=self.bound_app) for part in chunked(kw["it"], kw["n"])]
        return group(parts, app=self.bound_app, **self["options"])

    def final_tasks(self) -> list[Signature]:
        return self.group().final_tasks()

    def all_tasks(self) -> Iterator[Signature]:
        return iter(())

    def freeze(self, _id: str | None = None) -> Any:
        """Not meaningful until expanded: freeze ``.group()`` instead."""
        raise TypeError("freeze chunks(...).group() instead; chunks is expanded when applied")

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the parts as a group."""
        return self.group().apply_async(args, kwargs, **options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run the parts here."""
        return self.group().apply(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async``."""
        return self.apply_async(args, kwargs)

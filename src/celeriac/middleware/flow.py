"""Flow: the messages that start a frozen workflow, or continue it after one of its tasks
(the next chain step, a member of a group's or a chord's join, links, errbacks).

Each message carries what comes after it in ``Message.options["canvas"]``::

    then        continuation frames, innermost first:
                  {"chain": [node, ...]}     apply the next node with this result
                  {"join": group_id, "i": 3, "n": 10, "then": [...],
                   "err": "continue", "kind": "group", "link": [...], "link_error": [...]}
                                             record this result as member 3 of 10
                                             (kind: absent for a chord's header)
    link        nodes applied with the result when the task succeeds
    link_error  nodes applied with an error dict when it fails
    abort       an earlier task failed: do not run; end FAILURE with its error (REVOKED
                if this task was revoked itself), pass it on. Sent without its delay.
    chunk       args[0] is a list of argument lists: run the task once for each
    once        nothing follows, but a worker sent it and may send it again: keep a result

:class:`~celeriac.middleware.canvas.Canvas` continues workflows with a Flow in the
worker, and :mod:`celeriac.workflow` sends their first tasks with one.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

import msgspec

from celeriac.errors import BrokerError, NotRegistered, SerializationError
from celeriac.message import Message, encodable, encode_message
from celeriac.options import CALL_OPTIONS, to_ms

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.task import Task

log = logging.getLogger("celeriac.canvas")

Node = dict[str, Any]
"""A canvas piece as plain data: ``{"kind": "task" | "chain" | "group" | "chord", ...}``."""
Frame = dict[str, Any]
"""One continuation frame: ``{"chain": [...]}`` or ``{"join": ..., ...}``."""

NOTHING: Final[Any] = object()  # "no value to pass on" (None is a value)

# How the task an error dict names ended, by the error's type ("failed" for the rest).
_ENDED = {
    "celeriac.errors.TaskRevoked": "was revoked",
    "celeriac.errors.TaskExpired": "expired",
    "celeriac.errors.Reject": "was dead-lettered",
}
#: Seconds a join is kept at least after its latest member (``result_expires`` if longer).
#: A join is the chord's progress, not a result: dropped at once when it completes, it
#: only waits this long for the members still to come.
JOIN_KEEP = 30 * 86_400.0
_encoder = msgspec.json.Encoder()
_sending: ContextVar[bool] = ContextVar("celeriac_sending_workflow", default=False)


def sending_workflow() -> bool:
    """True while :meth:`Flow.send` sends a workflow's tasks: each must run under the id
    its workflow gave it (producer middleware must not swap in another task's id).

    Example:
        >>> sending_workflow()
        False
    """
    return _sending.get()


def join_ttl(app: Celeriac) -> float:
    """Seconds a join lives after its latest member: :data:`JOIN_KEEP`, or the app's
    ``result_expires`` if longer.

    It was ``result_expires`` alone: when two members finished further apart than that
    (``result_expires=3600`` and one member an hour slower than the rest), the join
    expired in between, the late member started a new one that never reached the
    header's size, and the body never ran, PENDING for ever with nothing logged.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://", result_expires=3600)
        >>> join_ttl(app) == JOIN_KEEP
        True
    """
    keep = app.conf.result_expires
    return max(keep, JOIN_KEEP) if math.isfinite(keep) else JOIN_KEEP


def join_key(group_id: str) -> str:
    """The small-store key that counts a group's finished members.

    Example:
        >>> join_key("8f1c:h")
        'celeriac:join:8f1c:h'
    """
    return f"celeriac:join:{group_id}"


class Flow:
    """Builds the messages that start a frozen node, or continue after one, then sends them.

    ``parent`` is the message whose task is continuing (None in the producer); it becomes
    the new messages' ``parent_id`` and gives them its ``root_id``.

    Example:
        >>> from celeriac import Celeriac
        >>> app = Celeriac("doc", broker="memory://")
        >>> flow = Flow(app)
        >>> flow.apply({"kind": "task", "task": "shop.add", "args": [1, 2],
        ...             "options": {"task_id": "t1"}})
        >>> [m.id for m in flow.messages]
        ['t1']
        >>> flow.send()
    """

    def __init__(self, app: Celeriac, parent: Message | None = None) -> None:
        self.app = app
        self.parent = parent
        self.messages: list[Message] = []
        self.completed: list[str] = []  # keys of the joins this flow completed

    def send(self) -> None:
        """Send every message built so far in one broker round trip; then drop the joins
        they complete."""
        if self.messages:
            messages, self.messages = self.messages, []
            token = _sending.set(True)
            try:
                self.app.publish_many(messages)
            finally:
                _sending.reset(token)
        completed, self.completed = self.completed, []
        for key in completed:
            self._drop_join(key)

    def _drop_join(self, key: str) -> None:
        # Dropped only once what follows is sent: a member redelivered before this still
        # completes the join again and sends it again (the same ids: a no-op). After it, a
        # redelivered member starts a new join that never completes (it expires), and the
        # chord sent again under its ids after forget() starts from nothing: the kept join
        # ran its body at the first member, with the old run's values.
        try:
            self.app.broker.join_delete(key)
        except BrokerError as exc:  # not worth running the task again: the join expires
            log.warning("could not drop the finished join %s (%s); it expires by itself", key, exc)

    def apply(
        self,
        node: Node,
        then: Sequence[Frame] = (),
        value: Any = NOTHING,
        abort: dict[str, str] | None = None,
    ) -> None:
        """Start ``node`` (passing ``value`` as a first argument), continuing with ``then``.

        With ``abort``, the node's first tasks are sent marked as failed by an earlier task,
        so the failure travels the same path (and ids) a result would have.
        """
        kind = node["kind"]
        if kind == "task":
            self.messages.append(self._message(node, list(then), value, abort))
        elif kind == "chain":
            steps = node["steps"]
            self.apply(steps[0], push_chain(steps[1:], then), value, abort)
        elif kind == "group":
            self._group(node, list(then), value, abort, on_error="stop", kind="group")
        elif kind == "chord":
            then = push_chain([node["body"]], then)
            on_error = node.get("on_error", "stop")
            self._group(node["header"], then, value, abort, on_error=on_error, kind="chord")
        else:
            raise ValueError(f"unknown canvas node kind {kind!r}")

    def _group(
        self,
        node: Node,
        then: list[Frame],
        value: Any,
        abort: dict[str, str] | None,
        *,
        on_error: str,
        kind: str,
    ) -> None:
        members = node["members"]
        links, errbacks = node.get("link", []), node.get("link_error", [])
        waited = bool(then or links or errbacks)  # else nothing waits for the whole group
        if not waited or abort is not None:
            for member in members:
                self.apply(member, (), value, abort)
        if not waited:
            return
        frame: Frame = {"join": node["id"], "n": len(members), "then": then}
        if on_error != "stop":
            frame["err"] = on_error
        if kind == "group":  # a chord's frame is the default (and what older workers sent)
            frame["kind"] = kind
        if links:
            frame["link"] = links
        if errbacks:
            frame["link_error"] = errbacks
        if abort is not None:
            # An earlier step failed, so no member runs (each ends FAILURE with that step's
            # error, above) and what waits for the group fails now. Joined like results,
            # the aborted members read "chord member 0 failed", naming the earlier step as
            # a member, and on_error="continue" ran the body with that error as a list.
            self._join_failed(frame, abort if kind == "group" else never_started(abort))
            return
        if not members:  # an empty group is complete at once
            self._join_done(frame, [])
            return
        for index, member in enumerate(members):
            self.apply(member, [{**frame, "i": index}], value, abort)

    def links(self, nodes: Sequence[Node], value: Any) -> None:
        """Apply callbacks (or errbacks) with ``value``."""
        for node in nodes:
            self.apply(node, (), value)

    def resume(self, value: Any, then: Sequence[Frame]) -> None:
        """Continue after a result: apply the next chain step, or record a join member."""
        if not then:
            return
        frame = then[0]
        if "chain" in frame:
            steps = frame["chain"]
            self.apply(steps[0], push_chain(steps[1:], then[1:]), value)
        else:
            self.join(frame, {"v": value})

    def fail(self, error: dict[str, str], then: Sequence[Frame]) -> None:
        """Continue after a failure: what follows ends FAILURE with ``error``, unrun."""
        if not then:
            return
        frame = then[0]
        if "chain" in frame:
            steps = frame["chain"]
            self.apply(steps[0], push_chain(steps[1:], then[1:]), abort=error)
        else:
            self.join(frame, {"e": error})

    def join(self, frame: Frame, entry: dict[str, Any]) -> None:
        """Record one member's result (``{"v": value}`` or ``{"e": error}``) in its join;
        the member that completes the join continues with every result, in member order."""
        broker, index, size = self.app.broker, frame["i"], frame["n"]
        key = join_key(frame["join"])
        raw = _encode_entry(entry, self.parent)
        count = broker.join_add(key, str(index), raw, join_ttl(self.app))
        if count >= size:
            self.completed.append(key)
        stop = frame.get("err", "stop") == "stop"
        kind = frame.get("kind", "chord")
        if "e" in entry and stop:
            # Fail fast: the callback will not run whatever the other members do. A member
            # that completes the join later fails it again, under the same ids: a no-op.
            self._join_failed(frame, chord_error(index, entry["e"], kind))
            return
        if count < size:
            return
        entries = _decode_entries(broker.join_values(key), size, frame["join"])
        failed = next(((i, e["e"]) for i, e in enumerate(entries) if "e" in e), None)
        if failed is not None and stop:
            self._join_failed(frame, chord_error(*failed, kind))
            return
        self._join_done(frame, [public_error(e["e"]) if "e" in e else e["v"] for e in entries])

    def _join_done(self, frame: Frame, values: list[Any]) -> None:
        self.links(frame.get("link", ()), values)
        self.resume(values, frame["then"])

    def _join_failed(self, frame: Frame, error: dict[str, str]) -> None:
        self.links(frame.get("link_error", ()), public_error(error))
        self.fail(error, frame["then"])

    def _message(
        self, node: Node, then: list[Frame], value: Any, abort: dict[str, str] | None
    ) -> Message:
        name = node["task"]
        task = self.app.tasks.get(name) or _task_elsewhere(self.app, name)
        args = list(node.get("args", ()))
        if value is not NOTHING and abort is None and not node.get("immutable"):
            args.insert(0, value)
        options = dict(node.get("options", {}))
        if abort is not None:
            # It will not run: settled now, not after its delay (an hour's countdown left
            # the workflow's handle PENDING for the hour, its failure already known).
            options.pop("countdown", None)
            options.pop("eta", None)
        if "expires_at" in options:
            options["expires"] = dt.datetime.fromtimestamp(options.pop("expires_at"), dt.UTC)
        too_late = _expiry_from_due(options) if self.parent is not None else None
        if "route" in node and name not in self.app.tasks:
            # This process lacks the task's code: use the queue its definition named.
            options.setdefault("queue", node["route"])
        carried: dict[str, Any] = {}
        if self.parent is not None:
            # Continuing in a worker: the policy options were checked by the producer that
            # built the workflow, which may be a newer version with options (or values)
            # this worker's middleware does not have. Checked again here, they raised out of
            # the continuation: the task committed and its workflow stopped for good. They
            # travel as they came, for the worker that runs the step to apply.
            carried = {k: options.pop(k) for k in list(options) if k not in CALL_OPTIONS}
        message = task.message(args, node.get("kwargs") or {}, **options)
        if too_late is not None:  # it waits for its due, then expires, as it always did
            message.expires = to_ms(too_late)
        message.options.update(carried)
        if value is not NOTHING and abort is None and self.parent is not None:
            problem = self._unsendable(message, value)
            if problem is not None:  # the same task, ending FAILURE with the reason
                return self._message(node, then, NOTHING, problem)
        data = {
            "then": then,
            "link": node.get("link"),
            "link_error": node.get("link_error"),
            "abort": abort,
            "chunk": node.get("chunk"),
        }
        data = {k: v for k, v in data.items() if v}
        if not data and self.parent is not None:
            # Sent while continuing a workflow, so it may be sent again under its fixed id:
            # a group's errbacks by each failed member and by the member completing the join,
            # anything by a redelivered parent. The broker ignores the second send only if
            # the first left a result, so this marks it a canvas task, which keeps one even
            # with ignore_result: an ignore_result errback ran once per failed member.
            data = {"once": True}
        if data:
            message.options["canvas"] = data
        if self.parent is not None:
            message.root_id = self.parent.root_id or self.parent.id
            message.parent_id = self.parent.id
        return message

    def _unsendable(self, message: Message, value: Any) -> dict[str, str] | None:
        # A result passed on can make the next message unsendable. Found here, that task
        # alone fails, saying why; its own continuation and errbacks still happen.
        limit = self.app.conf.task_payload_max_bytes
        try:
            size = len(encode_message(message))
        except SerializationError as exc:
            kind, text = "celeriac.errors.SerializationError", str(exc)
            if self.parent is not None and not encodable(value):
                # Not "cannot send task <next>: positional argument 0 ... Pass simple
                # values": the next step was given no such argument; the step before it
                # returned the value.
                text = (
                    f"cannot pass the result of {self.parent.task}[{self.parent.id}] on to "
                    f"{message.task}: a value of type {type(value).__name__} is not "
                    f"JSON-serializable ({exc.__cause__}). Return simple values such as ids "
                    "from that task."
                )
        else:
            if size <= limit:
                return None
            kind = "celeriac.errors.PayloadTooLarge"
            text = (
                f"cannot pass the previous result on to {message.task}: its message would be "
                f"{size:,} bytes, over task_payload_max_bytes ({limit:,}). Store large data "
                "elsewhere and return its id."
            )
        # Named after the task whose result it is, not the task that was to get it: that
        # one's outcome, event and errback read "not run: <itself> failed earlier", and the
        # task at fault showed only as succeeded.
        parent = self.parent
        assert parent is not None  # checked only where a worker continues a workflow
        return {"id": parent.id, "task": parent.task, "type": kind, "message": text, "how": _PASSED}


def _expiry_from_due(options: dict[str, Any]) -> float | None:
    """A later step's expiry, in place, as workflows have always counted it: seconds after
    the step is due when it has its own countdown or eta (a workflow's expires applies to
    every step, its countdown to the first ones only). Given to ``Task.message`` as seconds
    they would count from now, and one not after the due is refused there: raised while
    the worker continued the workflow, it hung PENDING for ever. Such an expiry is taken
    out of ``options`` and returned, for the message built without it (the step waits for
    its due, then expires, and its workflow is told); else None.

    Example:
        >>> options = {"countdown": 30.0, "expires": 10.0}
        >>> _expiry_from_due(options), round(options["expires"].timestamp() - time.time())
        (None, 40)
    """
    expires, countdown, eta = options.get("expires"), options.get("countdown"), options.get("eta")
    if expires is None:
        return None
    if countdown is not None:
        due = time.time() + float(countdown)
    elif eta is not None:
        due = eta.timestamp() if isinstance(eta, dt.datetime) else float(eta)
    else:
        return None
    at = expires.timestamp() if isinstance(expires, dt.datetime) else due + float(expires)
    if at <= due:
        del options["expires"]
        return at
    options["expires"] = dt.datetime.fromtimestamp(at, dt.UTC)
    return None


def push_chain(steps: Sequence[Node], then: Sequence[Frame]) -> list[Frame]:
    """``then`` with ``steps`` to run first, merged into a leading chain frame.

    Example:
        >>> a, b = {"kind": "task", "task": "a"}, {"kind": "task", "task": "b"}
        >>> push_chain([a], [{"chain": [b]}]) == [{"chain": [a, b]}]
        True
    """
    if not steps:
        return list(then)
    if then and "chain" in then[0]:
        return [{"chain": [*steps, *then[0]["chain"]]}, *then[1:]]
    return [{"chain": list(steps)}, *then]


def public_error(error: dict[str, str]) -> dict[str, str]:
    """The error dict handed to errbacks and put in ``on_error="continue"`` result lists.

    Example:
        >>> public_error({"id": "t1", "task": "a", "type": "T", "message": "m", "traceback": "..."})
        {'id': 't1', 'task': 'a', 'type': 'T', 'message': 'm'}
    """
    return {k: v for k, v in error.items() if k not in ("traceback", "how")}


def chord_error(index: int, error: dict[str, str], kind: str = "chord") -> dict[str, str]:
    """The error a join fails with: it names the failed member, its task id and its error
    (a member revoked, expired or dead-lettered unrun is said to be, not to have failed).

    ``kind`` is what the user wrote: a ``"chord"``, or a ``"group"`` followed by more steps.

    Example:
        >>> e = {"id": "g:3", "task": "shop.resize", "type": "builtins.ValueError",
        ...      "message": "bad size"}
        >>> chord_error(3, e)["message"]
        'chord member 3 (shop.resize[g:3]) failed: builtins.ValueError: bad size'
        >>> chord_error(3, e, "group")["message"]
        'group member 3 (shop.resize[g:3]) failed: builtins.ValueError: bad size'
        >>> revoked = {**e, "type": "celeriac.errors.TaskRevoked", "message": "revoked"}
        >>> chord_error(3, revoked)["message"]
        'chord member 3 (shop.resize[g:3]) was revoked: celeriac.errors.TaskRevoked: revoked'
    """
    # A member that is itself a chord or group: its own error names the task inside it;
    # "chord member 0 (<that task>)" named an inner task as the outer member.
    named = "" if error["type"] == _CHORD_ERROR else f" ({error['task']}[{error['id']}])"
    return {
        "id": error["id"],
        "task": error["task"],
        "type": _CHORD_ERROR,
        "message": (
            f"{kind} member {index}{named} {what_happened(error)}: "
            f"{error['type']}: {error['message']}"
        ),
        "traceback": error.get("traceback", ""),
        # What waits for the chord says so too: "not run: <member> failed earlier" was
        # said of a member that was revoked.
        "how": what_happened(error),
    }


def never_started(error: dict[str, str]) -> dict[str, str]:
    """The error a chord's body fails with when a step before the chord failed: it names
    that step (task and id) and says that no member of the chord ran.

    Example:
        >>> e = {"id": "w:s0", "task": "shop.fetch", "type": "builtins.OSError",
        ...      "message": "no route"}
        >>> text = never_started(e)["message"]
        >>> text.startswith("the chord never started (none of its members ran)")
        True
        >>> text.partition(": ")[2]
        'an earlier step of its workflow, shop.fetch[w:s0], failed: builtins.OSError: no route'
    """
    return {
        "id": error["id"],
        "task": error["task"],
        "type": "celeriac.errors.ChordError",
        "message": (
            "the chord never started (none of its members ran): an earlier step of its "
            f"workflow, {error['task']}[{error['id']}], {what_happened(error)}: "
            f"{error['type']}: {error['message']}"
        ),
        "traceback": error.get("traceback", ""),
    }


def what_happened(error: dict[str, str]) -> str:
    """How the task an error dict names ended, in words: a revoked step did not fail.

    Example:
        >>> what_happened({"type": "celeriac.errors.TaskRevoked"})
        'was revoked'
    """
    return error.get("how") or _ENDED.get(error.get("type", ""), "failed")


_CHORD_ERROR = "celeriac.errors.ChordError"

#: How a task ended whose result could not be passed on (error dicts' "how"; older
#: versions ignore it and say "failed").
_PASSED = "returned a result that could not be passed on"


def _encode_entry(entry: dict[str, Any], member: Message | None) -> bytes:
    try:
        return _encoder.encode(entry)
    except (TypeError, msgspec.EncodeError, OverflowError) as exc:
        # The result store turns such a value into a FAILURE; the join must agree. The
        # member is named (the message that finished), as for any other failure: the
        # chord's error read "chord member 1 (?[?]) failed".
        return _encoder.encode(
            {
                "e": {
                    "id": member.id if member is not None else "?",
                    "task": member.task if member is not None else "?",
                    "type": "celeriac.errors.SerializationError",
                    "message": f"the result is not JSON-serializable ({exc})",
                }
            }
        )


def _decode_entries(values: dict[str, bytes], size: int, group_id: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for index in range(size):
        raw = values.get(str(index))
        if raw is None:  # expired from the store (join_ttl) before the join completed
            gone = {"id": f"{group_id}[{index}]", "task": "?", "type": "celeriac.errors.ChordError"}
            entries.append({"e": {**gone, "message": "its result expired before the join"}})
        else:
            entries.append(msgspec.json.decode(raw))
    return entries


def _task_elsewhere(app: Celeriac, name: str) -> Task[Any, Any]:
    from celeriac.options import TaskOptions
    from celeriac.task import Task

    return Task(app, _runs_elsewhere, name, TaskOptions())


def _runs_elsewhere(*args: Any, **kwargs: Any) -> Any:
    raise NotRegistered("this task is only known by name here; a worker that has it runs it")

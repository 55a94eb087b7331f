"""The broker: ddmq's public API, a thin facade over the modules that do the work.

There is no server. Each method checks its arguments, finds the queue (a
:class:`~ddmq.queuedir.Queue` held by the :class:`~ddmq.root.Root`) and runs one
of the protocol's transitions (:mod:`ddmq.transitions`) or a housekeeping
pass (:mod:`ddmq.housekeeping`); ``docs/architecture.md`` shows the path of a
message through them, and ``docs/protocol.md`` each step on disk.

``ddmq.broker(root)`` is the seed's spelling of ``ddmq.Broker(root)``: this
module can be called like the class, and ``ddmq.broker.Broker`` is the class.
"""
from __future__ import annotations

import errno
import os
import sys
import types

from . import housekeeping, inventory, jobends, transitions
from .errors import DdmqError, InvalidSetting, PartlyPublished, QueueExists, QueueNotFound, StorageError, UsageError
from .housekeeping import CleanReport
from .layout import DEAD, READY, WORK, abandoned_in_root, job_key
from .message import Message
from .root import DEFAULT_ROOT, Root, resolve_root
from .settings import MAX_SECONDS, MIN_SECONDS, validate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Callable, Iterable, Union

    from .inventory import Entry
    from .queuedir import Queue
    from .settings import Settings

    Receipt = Union[Message, str]
    Match = Callable[[Message], bool]

__all__ = ["Broker", "CleanReport", "resolve_root", "DEFAULT_ROOT"]

# The settings one publish may override for its messages, in the order _publish_settings takes them.
_OVERRIDES = ("priority", "message_timeout", "requeue", "requeue_prio", "durable", "requeue_limit")


def _check_count(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a whole number >= 1, not {n!r}")


def _check_seconds(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not MIN_SECONDS <= value <= MAX_SECONDS:
        raise UsageError(f"{what} must be a number of seconds from {MIN_SECONDS:g} to {MAX_SECONDS:g}, not {value!r}")


class Broker:
    """A handle on one ddmq root directory.

    ``Broker(root, create=True)`` initialises the root if needed. Without a root
    the ``DDMQ_ROOT`` environment variable is used, else ``~/.ddmq``, which is
    created on first use unless ``create=False`` says never to create a root.
    A Broker holds no locks; it keeps the directories of the root and of the
    queues it uses open (see :mod:`ddmq.root`), until it is garbage-collected
    or :meth:`close` d. Any number of Brokers, in any number of processes on
    any number of hosts, may share a root.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, create: bool | None = None):
        path, is_default = resolve_root(root)
        # Broker(root, create=True) creates missing queues on publish and consume
        # too, as the seed documented; by default a mistyped queue name is an error.
        self._create_queues = create is True
        self._root = Root(path, is_default if create is None else create)

    def __repr__(self) -> str:
        return f"Broker({self._root.path!r})"

    def close(self) -> None:
        """Close the directories this Broker holds open; it opens them again when used."""
        self._root.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def root(self) -> Path:
        """The root directory. Held as a string inside: importing pathlib costs
        a command-line tool more start-up time than its whole publish."""
        from pathlib import Path

        return Path(self._root.path)

    # ---------------------------------------------------------------- queues
    def settings(self, queue: str | None = None) -> dict[str, Any]:
        """Effective settings of a queue (or of the root when ``queue`` is None)."""
        if queue is None:
            return self._root.settings().as_dict()
        return self._root.checked(queue).read_settings().as_dict()

    def settings_sources(self, queue: str) -> dict[str, tuple[Any, str]]:
        """Each effective setting of a queue and where it came from: ``"default"`` or the file's path."""
        return self._root.settings_sources(queue)

    def set_settings(self, queue: str, unset: Iterable[str] = (), **settings: Any) -> None:
        """Change what a queue's own ``ddmq.yaml`` sets (atomically): ``settings`` set, ``unset`` keys removed.

        New settings apply to messages published afterwards; a message keeps
        the timeout and requeue rules it was published with.
        """
        self._root.set_settings(queue, validate(settings, "set_settings", InvalidSetting), list(unset))

    def create_queue(self, queue: str, exist_ok: bool = False, **settings: Any) -> None:
        """Create a queue, with optional settings written to its ``ddmq.yaml``.

        The queue is built under a hidden name and renamed into place, so other
        clients see either no queue or a complete one. Every directory is made
        private, opened without following links and only then given its
        permissions (see :func:`ddmq.atomic.make_own_dir`). With ``exist_ok``
        an existing queue is fine if it has the settings given; QueueExists if
        its settings differ.
        """
        self._root.create_queue(queue, exist_ok, validate(settings, "create_queue", InvalidSetting))

    def delete_queue(self, queue: str, force: bool = False) -> None:
        """Delete a queue and all its messages.

        Refuses, unless ``force``, when the directory holds anything ddmq did
        not write, so a mistyped name cannot wipe someone's data. The queue is
        first renamed to a hidden name (atomic: clients see it gone at once),
        then removed.
        """
        self._root.delete_queue(queue, force)

    def list_queues(self) -> list[str]:
        """Names of the queues in this root, sorted."""
        return self._root.list_queues()

    def counts(self, queue: str) -> dict[str, int]:
        """How many messages are ready, in work (leased) and dead."""
        return inventory.counts(self._root.checked(queue))

    def stats(self, queue: str) -> dict[str, Any]:
        """counts, plus ``oldest_ready_age`` (seconds, None if nothing is ready) and ``expired_leases``."""
        return inventory.stats(self._root.checked(queue))

    # -------------------------------------------------------------- job ends
    def publish_job_end(self, queue: str, job: str, body: Any, *, headers: dict[str, Any] | None = None,
                        create: bool = False, **overrides: Any) -> Message | None:
        """Publish a batch job's terminal event unless one is already recorded for it: the Message, or None.

        ``job`` is the job's key (:func:`ddmq.layout.job_key`: ``CLUSTER.JOBID``).
        Exactly one publisher wins per job and queue, across processes and
        nodes (see :mod:`ddmq.jobends`); ``overrides`` are publish's.
        """
        key = job_key(None, job)
        unknown = set(overrides) - set(_OVERRIDES)
        if unknown:
            raise UsageError(f"publish_job_end() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
        q, settings = self._publish_settings(queue, create, tuple(overrides.get(k) for k in _OVERRIDES))
        msg, data = transitions.new_message(queue, body, settings, headers)
        try:
            return msg if jobends.publish_end(q, key, msg, data, settings.mode) else None
        except StorageError as exc:
            raise self._root.gone(queue, exc) from None

    def job_end(self, queue: str, job: str) -> Message | None:
        """The terminal event recorded for ``job`` (its key), or None: a constant cost, and nothing is consumed."""
        key = job_key(None, job)
        return jobends.end_of(self._root.queue(queue), key)

    def job_ends(self, queue: str) -> list[str]:
        """The keys of every job whose end is recorded in ``queue``."""
        return jobends.recorded(self._root.checked(queue))

    def reconcile_due(self, queue: str, min_interval: float) -> bool:
        """For a reconciler: may the scheduler be asked about ``queue``'s jobs now (at most once per ``min_interval``)?"""
        return jobends.reconcile_due(self._root.checked(queue), min_interval)

    # ------------------------------------------------------------ operators
    def entries(self, queue: str, state: str = DEAD, n: int | None = None) -> list[Entry]:
        """Every file in a state directory, valid message or not, with its reason if dead (see :mod:`ddmq.inventory`)."""
        if n is not None:
            _check_count(n)
        if state not in (READY, WORK, DEAD):
            raise UsageError(f"state must be one of ready, work, dead; not {state!r}")
        return inventory.entries(self._root.checked(queue), state, n)

    def show(self, queue: str, message_id: str) -> Entry:
        """One message, in whatever state it is now; NotFound if it is in none."""
        [checked] = inventory.check_ids([message_id])
        return inventory.find(self._root.checked(queue), checked)

    def requeue_dead(self, queue: str, ids: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
        """Move dead letters back to ready (all but corrupt ones, or those ``ids``); (ids requeued, names skipped)."""
        wanted = inventory.check_ids(ids) if ids is not None else None
        return inventory.requeue_dead(self._root.checked(queue), wanted)

    def _existing_or_created(self, queue: str) -> tuple[Queue, Settings]:
        """An existing queue and its settings; a Broker made with ``create=True`` first creates a missing one."""
        try:
            return self._root.with_settings(queue)
        except QueueNotFound as exc:
            if not self._create_queues:
                raise
            missing = exc
        try:
            self.create_queue(queue, exist_ok=True)
        except QueueExists:  # a directory of that name that is not a queue is in the way
            raise missing from None
        return self._root.with_settings(queue)

    # --------------------------------------------------------------- publish
    def publish(
        self,
        queue: str,
        message: Any,
        *,
        priority: int | None = None,
        message_timeout: float | None = None,
        requeue: bool | None = None,
        requeue_prio: int | None = None,
        requeue_limit: int | None = None,
        durable: bool | None = None,
        headers: dict[str, Any] | None = None,
        create: bool = False,
    ) -> Message:
        """Publish one message; it is visible to consumers, complete, when this returns.

        Keyword arguments override the queue's settings for this message;
        ``create`` creates the queue if it does not exist (so does a Broker
        made with ``create=True``).
        """
        q, settings = self._publish_settings(queue, create, (priority, message_timeout, requeue, requeue_prio,
                                                             durable, requeue_limit))
        msg, data = transitions.new_message(queue, message, settings, headers)
        try:
            transitions.publish(q, msg, data, settings.mode)
        except StorageError as exc:
            raise self._root.gone(queue, exc) from None
        return msg

    def publish_many(
        self,
        queue: str,
        messages: Iterable[Any],
        *,
        priority: int | None = None,
        message_timeout: float | None = None,
        requeue: bool | None = None,
        requeue_prio: int | None = None,
        requeue_limit: int | None = None,
        durable: bool | None = None,
        headers: dict[str, Any] | None = None,
        create: bool = False,
        before_visible: Callable[[list[Message]], None] | None = None,
    ) -> list[Message]:
        """Publish several messages, each one atomically, with one durability barrier for all.

        Every payload is written first; if durable, one barrier makes them all
        durable (one syncfs on a local filesystem, instead of an fsync each);
        then ``before_visible`` is called with the messages, if given; then
        each is renamed into ``ready/`` and the directory is synced once. So
        with ``durable`` every message is on stable storage before any is
        visible, and its name too when this returns. A failure before the
        first rename, ``before_visible`` raising included, publishes nothing:
        so a command can print the new ids first and publish only if that
        worked. A failure after it raises :class:`PartlyPublished`, whose
        ``published`` says how many (the first ones) are in the queue.
        ``messages`` is read into a list first: pass chunks of a long stream.
        """
        q, settings = self._publish_settings(queue, create, (priority, message_timeout, requeue, requeue_prio,
                                                             durable, requeue_limit))
        try:
            return transitions.publish_many(q, messages, settings, headers, before_visible)
        except PartlyPublished:
            raise
        except StorageError as exc:
            raise self._root.gone(queue, exc) from None

    def _publish_settings(self, queue: str, create: bool, overrides: tuple[Any, ...]) -> tuple[Queue, Settings]:
        """The queue and its settings for a publish, with the call's overrides (those not None) applied."""
        if create:
            self.create_queue(queue, exist_ok=True)
        q, settings = self._existing_or_created(queue)
        if overrides == (None,) * len(_OVERRIDES):
            return q, settings
        chosen = validate({k: v for k, v in zip(_OVERRIDES, overrides) if v is not None}, "publish", InvalidSetting)
        return q, settings.overridden(chosen)

    # --------------------------------------------------------------- consume
    def consume(
        self, queue: str, n: int = 1, lease: float | None = None, ack: bool = False,
        match: Match | None = None,
    ) -> list[Message]:
        """Claim up to ``n`` messages, best priority first; returns a list, maybe empty.

        Each message is leased to this consumer for ``lease`` seconds (default:
        the message's ``message_timeout``); ack, nack or extend it before then,
        or it is requeued for someone else. ``ack=True`` acks at once
        (at-most-once from here on). With ``match``, only messages for which
        ``match(message)`` is true are claimed; the others are not disturbed,
        and a name once rejected is not read again for the same predicate
        object (so pass the same one on every call).
        """
        _check_count(n)
        if lease is not None:
            _check_seconds(lease, "lease")
        q, settings = self._existing_or_created(queue)
        housekeeping.maybe_clean(q, settings.clean_interval)
        try:
            claimed = transitions.claim(q, n, lease, settings, ack, match)
            if len(claimed) < n and housekeeping.requeue_expired(q).requeued:
                try:
                    claimed += transitions.claim(q, n - len(claimed), lease, settings, ack, match)
                except DdmqError:
                    if not ack:
                        transitions.give_back(q, claimed)
                    raise
            return claimed
        except StorageError as exc:
            raise self._root.gone(queue, exc) from None

    def peek(self, queue: str, n: int = 1, state: str = READY, match: Match | None = None) -> list[Message]:
        """Look at up to ``n`` messages without claiming them (state: ready, work or dead).

        ``match`` selects messages as in :meth:`consume`.
        """
        _check_count(n)
        if state not in (READY, WORK, DEAD):
            raise UsageError(f"state must be one of ready, work, dead; not {state!r}")
        return transitions.peek(self._root.checked(queue), n, state, match)

    # ------------------------------------------------------------ the lease
    def _holder(self, receipt: Receipt, queue: str | None) -> Queue:
        """The queue in which the lease named by ``receipt`` lies, checked now."""
        if isinstance(receipt, Message):
            if receipt.receipt is None:
                raise UsageError(f"message {receipt.id} is not held by this consumer")
            return self._root.checked(queue or receipt.queue)
        if queue is None:
            raise UsageError("a queue is needed to find a message by its receipt")
        return self._root.checked(queue)

    def ack(self, message: Receipt, queue: str | None = None) -> None:
        """Done with the message: remove it. LeaseLost if the lease is no longer ours."""
        if isinstance(message, Message) and message.receipt is not None:
            # Fast path, one unlink: the lease is where this consumer last put it.
            if transitions.ack_held(self._root.queue(queue or message.queue), message):
                return
        transitions.settle(self._holder(message, queue), message)

    def nack(self, message: Receipt, queue: str | None = None, requeue: bool = True) -> str:
        """Give the message back: requeue it (until its requeue limit) or dead-letter it.

        Returns where it went: ``"ready"`` or ``"dead"``.
        """
        return transitions.nack(self._holder(message, queue), message, requeue)

    def release(self, message: Receipt, queue: str | None = None) -> None:
        """Put a claimed message back exactly as it was, as if never claimed.

        For a consumer that took a message it turns out it cannot use yet (a
        waiter interrupted before it had all it waited for): unlike nack, the
        priority and requeue count are unchanged, so no requeue limit is spent.
        """
        transitions.release(self._holder(message, queue), message)

    def extend(self, message: Receipt, seconds: float | None = None, queue: str | None = None) -> int:
        """Renew the lease for ``seconds`` from now (default: the message timeout).

        Returns the new expiry (ns since the epoch). LeaseLost if it was requeued.
        """
        q = self._holder(message, queue)
        if seconds is None:
            seconds = message.message_timeout if isinstance(message, Message) else q.settings().message_timeout
        _check_seconds(seconds, "seconds")
        return transitions.extend(q, message, seconds)

    # ---------------------------------------------------------- housekeeping
    def purge(self, queue: str, dead: bool = False) -> int:
        """Remove every ready message (or, with ``dead``, every dead letter); returns how many."""
        return housekeeping.purge(self._root.checked(queue), dead)

    def clean(self, queue: str | None = None) -> CleanReport:
        """Housekeeping now, for one queue or all.

        Requeues (or dead-letters) messages whose lease expired, dead-letters
        files in ready/ and work/ that are not ddmq messages, and removes
        temporary files abandoned by crashed writers.
        """
        report = CleanReport()
        if queue is not None:
            report.add(housekeeping.clean_queue(self._root.checked(queue), scan_ready=True))
            return report
        root = self._root
        housekeeping.remove_abandoned(root.dir, root.clock.now(root.dir), abandoned_in_root)
        refused: StorageError | None = None
        for name in root.list_queues():
            try:
                q = root.queue(name)
            except StorageError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                # A queue a member broke (a link in place of its directories) is
                # refused, but must not stop the others being cleaned.
                refused = refused or exc
                continue
            report.add(housekeeping.clean_queue(q, scan_ready=True))
        if refused is not None:
            raise refused
        return report


class _CallableModule(types.ModuleType):
    """This module, callable: ``ddmq.broker(root, create=True)`` as the seed wrote it."""

    def __call__(self, root: str | os.PathLike[str] | None = None, create: bool | None = None) -> Broker:
        return Broker(root, create)


sys.modules[__name__].__class__ = _CallableModule

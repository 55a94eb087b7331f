"""Numbers on the command lines of ``ddmq-wait``, ``ddmq-dispatch`` and ``ddmq-notify``, and the
options that ask the reconciler, which ``ddmq-wait`` and ``ddmq-jobstate`` share.

Every numeric option is of type :class:`Number`, so that NaN, infinities,
negatives where they mean nothing and absurd magnitudes are refused where
they are typed, as a one-line usage error (exit 2), instead of failing later
with an OverflowError from ``time.sleep`` or a lock, or, for NaN, never timing
out. Seconds are capped at the core's ``MAX_SECONDS`` (1e9, some 31 years),
the longest lease a queue accepts; counts at :data:`MAX_COUNT`.

Imported by ``ddmq-notify`` at the end of every batch job: nothing here may
import more than the command already does (click, and ddmq's core).
"""
from __future__ import annotations

import math

import click

from ddmq import MAX_SECONDS, MIN_SECONDS, UsageError

TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any, Callable

# More messages than one wait or one dispatcher run could mean: ddmq is built for
# messages per second, and each one held is a file and a lease.
MAX_COUNT = 1_000_000
# A C int: exit statuses (PBS reports negative ones, Torque 256+signal) and alike.
INT_RANGE = (-(2 ** 31), 2 ** 31 - 1)
# Shortest poll interval: less would be a busy loop on the shared metadata server.
MIN_INTERVAL = 0.001
# Shortest lease the core accepts.
MIN_LEASE = MIN_SECONDS


def check_number(value: Any, what: str, *, low: float = 0, high: float = MAX_SECONDS,
                 low_open: bool = False, whole: bool = False) -> Any:
    """``value`` if it is a finite number in range (``low < value`` when ``low_open``), else UsageError.

    For the Python API (``ddmq_hpc.wait.wait``, ``ddmq_hpc.snakemake``) as much as for options.
    """
    ok = not isinstance(value, bool) and isinstance(value, int if whole else (int, float))
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise UsageError(f"{what} must be {_describe(low, high, low_open, whole)}, not {value!r}")
    return value


def _describe(low: float, high: float, low_open: bool, whole: bool) -> str:
    kind = "a whole number" if whole else "a number of seconds"
    if low_open and low == 0:
        return f"{kind} greater than 0 and at most {_fmt(high)}"
    return f"{kind} from {_fmt(low)} to {_fmt(high)}"


def _fmt(value: float) -> str:
    """1e9, not 1e+09; whole numbers and 0.001 as they are."""
    if isinstance(value, int):
        return str(value)
    return f"{value:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


class Number(click.ParamType):
    """A click option type: an int (``whole``) or a float, checked by :func:`check_number` as it is parsed."""

    def __init__(self, *, low: float = 0, high: float = MAX_SECONDS, low_open: bool = False,
                 whole: bool = False):
        self.low, self.high, self.low_open, self.whole = low, high, low_open, whole
        self.name = "integer" if whole else "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = value if isinstance(value, str) else repr(value)
        if isinstance(value, str):
            try:
                value = int(value) if self.whole else float(value)
            except ValueError:
                self.fail(f"not {'a whole number' if self.whole else 'a number'}: {text[:40]!r}", param, ctx)
        try:
            return check_number(value, "it", low=self.low, high=self.high, low_open=self.low_open,
                                whole=self.whole)
        except UsageError:
            self.fail(f"must be {_describe(self.low, self.high, self.low_open, self.whole)}, not {text[:40]!r}",
                      param, ctx)


def seconds(*, positive: bool = True) -> Number:
    """Seconds: greater than 0 (``positive``) or at least 0, at most MAX_SECONDS."""
    return Number(low=0, low_open=positive)


def count(low: int = 1, high: int = MAX_COUNT) -> Number:
    return Number(low=low, high=high, whole=True)


def check_wait_numbers(count: Any, timeout: Any, interval: Any, max_interval: Any) -> None:
    """The numbers of a wait (``ddmq_hpc.wait.wait`` and ``ddmq_hpc.snakemake.wait_for``), or UsageError."""
    check_number(count, "count", low=1, high=MAX_COUNT, whole=True)
    if timeout is not None:
        check_number(timeout, "timeout")
    check_number(interval, "interval", low=MIN_INTERVAL)
    check_number(max_interval, "max_interval", low=MIN_INTERVAL)
    if not interval <= max_interval:
        raise UsageError("need interval <= max_interval")


# The reconciler's defaults (ddmq-reconcile's --grace and --min-interval): a
# job's own trap or epilogue gets two minutes to speak first, and the scheduler
# is asked at most once a minute per queue.
RECONCILE_GRACE = 120.0
RECONCILE_INTERVAL = 60.0


def reconcile_options(when: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--reconcile``, ``--reconcile-grace`` and ``--reconcile-interval``, as one decorator.

    A command that may run the reconciler on the side (``ddmq-wait`` while it
    waits, ``ddmq-jobstate`` for a job with no end) declares them here, so
    that their names, defaults and limits are the same in every command;
    ``when`` starts the flag's help: when the command asks.
    """
    flag = click.option("--reconcile", is_flag=True,
                        help=f"{when}, ask the scheduler (as ddmq-reconcile does, at most once per "
                             "--reconcile-interval) for jobs of QUEUE killed too hard to publish their own end.")
    grace = click.option("--reconcile-grace", type=seconds(positive=False), default=RECONCILE_GRACE,
                         metavar="SECONDS", show_default=True,
                         help="With --reconcile: leave a job that ended less than this long ago to its own trap.")
    interval = click.option("--reconcile-interval", type=seconds(positive=False), default=RECONCILE_INTERVAL,
                            metavar="SECONDS", show_default=True,
                            help="With --reconcile: ask the scheduler at most once in this long.")

    def declare(command: Callable[..., Any]) -> Callable[..., Any]:
        return flag(grace(interval(command)))
    return declare

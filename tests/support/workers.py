r"""Worker processes for the concurrency and crash tests.

Each worker appends one line per event to its own log and flushes it at
once, so that a worker killed with SIGKILL leaves an exact record of what it
had done: lines reach the kernel before the next filesystem step starts.

    python -m tests.support.workers [--faults P] publish ROOT QUEUE TAG COUNT LOG \
        [--priorities 1,5,9] [--durable] [--pause S]
    python -m tests.support.workers [--faults P] consume ROOT QUEUE LOG STOPFILE [--lease S] [--hold S] [--batch N]
    python -m tests.support.workers [--faults P] clean ROOT QUEUE STOPFILE

(from the checkout, or with it on PYTHONPATH, as the tests' conftest sets it).

With ``--faults P`` each write, fsync, rename and unlink fails with
probability P with ENOSPC, EIO, EDQUOT or ESTALE (before doing anything, as a
full disk or a server hiccup would); workers then log the error and go on.
"""
from __future__ import annotations

import argparse
import errno
import os
import random
import time

from ddmq import Broker, DdmqError, LeaseLost

FAULT_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.ESTALE)


def inject_faults(rate: float, seed: int) -> None:
    """Make os.write/fsync/rename/unlink fail at random, as a sick filesystem would."""
    rng = random.Random(seed)
    for name in ("write", "fsync", "rename", "unlink"):
        real = getattr(os, name)

        def faulty(*args: object, _real=real, **kwargs: object) -> object:
            if rng.random() < rate:
                code = rng.choice(FAULT_ERRNOS)
                raise OSError(code, os.strerror(code))
            return _real(*args, **kwargs)
        setattr(os, name, faulty)


class Log:
    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)

    def __call__(self, *fields: object) -> None:
        self.file.write(" ".join(map(str, fields)) + "\n")
        self.file.flush()


def publish(args: argparse.Namespace) -> None:
    b, log = Broker(args.root), Log(args.log)
    priorities = [int(p) for p in args.priorities.split(",")]
    for i in range(args.count):
        body = f"{args.tag}:{i}"
        prio = priorities[i % len(priorities)]
        log("try", body)
        try:
            msg = b.publish(args.queue, body, priority=prio, durable=args.durable)
        except DdmqError as exc:
            log("fail", body, type(exc).__name__)
            continue
        log("ok", body, msg.id, prio, msg.published)
        time.sleep(args.pause)


def consume(args: argparse.Namespace) -> None:
    b, log = Broker(args.root), Log(args.log)
    rng = random.Random(os.getpid())
    idle_since = None
    while True:
        try:
            msgs = b.consume(args.queue, n=args.batch, lease=args.lease)
        except DdmqError as exc:
            log("fault", "consume", type(exc).__name__)
            continue
        if not msgs:
            if os.path.exists(args.stopfile):
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    return
            time.sleep(0.005)
            continue
        idle_since = None
        for m in msgs:
            # The claim happened inside consume, exactly one lease before the expiry.
            log("claim", m.message, m.receipt, m.lease_expires - int(args.lease * 1e9), m.lease_expires)
        for m in msgs:
            if args.hold:
                time.sleep(rng.uniform(0, args.hold))
            receipt = m.receipt
            try:
                b.ack(m)
                log("ack", m.message, receipt, time.time_ns())
            except LeaseLost:
                log("lost", m.message, receipt, time.time_ns())
            except DdmqError as exc:  # the ack did not happen: redelivered after the lease
                log("fault", m.message, type(exc).__name__)


def clean(args: argparse.Namespace) -> None:
    b = Broker(args.root)
    while not os.path.exists(args.stopfile):
        try:
            b.clean(args.queue)
        except DdmqError:
            pass
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faults", type=float, default=0.0)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish")
    for name in ("root", "queue", "tag"):
        p.add_argument(name)
    p.add_argument("count", type=int)
    p.add_argument("log")
    p.add_argument("--priorities", default="999")
    p.add_argument("--durable", action="store_true")
    p.add_argument("--pause", type=float, default=0.0, help="seconds to sleep after each publish")
    c = sub.add_parser("consume")
    for name in ("root", "queue", "log", "stopfile"):
        c.add_argument(name)
    c.add_argument("--lease", type=float, default=60.0)
    c.add_argument("--hold", type=float, default=0.0)
    c.add_argument("--batch", type=int, default=1)
    k = sub.add_parser("clean")
    for name in ("root", "queue", "stopfile"):
        k.add_argument(name)
    args = parser.parse_args()
    if args.faults:
        inject_faults(args.faults, os.getpid())
    {"publish": publish, "consume": consume, "clean": clean}[args.cmd](args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Where one message's time goes between its system calls.

    python3 -m benchmarks.steps [--n 5000] [--dir /dev/shm]   # from the checkout: its ddmq is measured

Profilers hook every Python call and inflate exactly the small steps this is
about, and ``timeit`` runs a step with warm caches, which it never has in
use: between two system calls the kernel has evicted much of the CPU's
cache. So this runs W1 (publish n, then consume and ack them all) on the
working tree, one step at a time in the order ddmq does them, and reads the
clock between the steps. The steps call ddmq's internals; keep them in step
with ``Broker.publish`` and ``Broker.consume``. Nothing is written to the
repository. Last, a bare loop (see ``bare``) shows what the same work costs
with nothing but the system calls, JSON and file names.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import tempfile
import time

from ddmq import Broker, atomic, housekeeping
from ddmq.layout import claimed_name, lease_receipt, new_message_id, new_token, parse_ready, publish_tmp_name, \
    ready_name
from ddmq.message import Lease, Message, decode, encode
from ddmq.transitions import HOST, _fill_state, publish_time


def publish_steps(b: Broker, n: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    spent = dict.fromkeys(["settings", "message object", "encode (JSON)", "name", "create+write+close",
                           "rename into ready/", "listing push"], 0)
    for i in range(n):
        t = [clock()]
        q, settings = b._root.with_settings("q")
        t.append(clock())
        msg = Message(new_message_id(), "q", f"message {i:07d}", settings.priority, publish_time(),
                      settings.message_timeout, settings.requeue, settings.requeue_prio,
                      settings.requeue_limit, settings.durable, HOST, os.getpid(), {})
        t.append(clock())
        data = encode(msg)
        t.append(clock())
        name = ready_name(msg.priority, msg.published, msg.id)
        tmp = publish_tmp_name(msg.id)
        t.append(clock())
        atomic.write_private(q.tmp, tmp, data, False, settings.mode)
        t.append(clock())
        q.tree.put(q.tmp, tmp, name)
        t.append(clock())
        q.readied(name)
        t.append(clock())
        for key, start, end in zip(spent, t, t[1:]):
            spent[key] += end - start
    return spent


def consume_steps(b: Broker, n: int) -> dict[str, float]:
    clock = time.perf_counter_ns
    spent = dict.fromkeys(["settings + clean check", "next name", "parse name", "lease name + token",
                           "rename into work/", "open", "read", "close", "decode (JSON)", "fill state",
                           "ack (unlink)"], 0)
    for _ in range(n):
        t = [clock()]
        q, settings = b._root.with_settings("q")
        housekeeping.maybe_clean(q, settings.clean_interval)
        t.append(clock())
        name = next(q.ready_names())
        t.append(clock())
        ready = parse_ready(name)
        assert ready is not None
        t.append(clock())
        expires, token = q.now() + int(settings.message_timeout * 1e9), new_token()
        work_name = claimed_name(name, expires, token)
        t.append(clock())
        q.tree.move_out(name, q.work, work_name)
        t.append(clock())
        fd = os.open(work_name, atomic.READ_FLAGS, dir_fd=q.work.fd)
        t.append(clock())
        data = os.read(fd, 1 << 16)
        os.read(fd, 1 << 16)
        t.append(clock())
        os.close(fd)
        t.append(clock())
        msg = decode(data)
        t.append(clock())
        _fill_state(msg, ready)
        msg.lease = Lease(expires, lease_receipt(ready.id, token), work_name)
        t.append(clock())
        b.ack(msg)
        t.append(clock())
        for key, start, end in zip(spent, t, t[1:]):
            spent[key] += end - start
    return spent


def bare(base: str, n: int) -> tuple[float, float]:
    """A bare loop doing what a file queue with JSON payloads cannot skip: the
    system calls of publish, claim, read and ack, JSON in (from a template, as
    ddmq writes it) and out, names made and split; no checks, no settings, no
    leases on a clock, no listing cache.
    What Python itself costs for a queue of this design."""
    for d in ("tmp", "ready", "work"):
        os.makedirs(f"{base}/{d}")
    template = ('{"format": 1, "id": "%s", "queue": "q", "published": %d, "priority": 999, '
                '"message_timeout": 600, "requeue": true, "requeue_prio": 0, "requeue_limit": null, '
                '"durable": false, "host": "h", "pid": 1, "headers": {}, "message": %s}')
    quote = json.encoder.c_encode_basestring
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = time.perf_counter_ns()
    for i in range(n):
        mid, now = os.urandom(16).hex(), time.time_ns()
        data = (template % (mid, now, quote(f"message {i:07d}"))).encode()
        fd = os.open(f"{base}/tmp/{mid}.tmp", flags, 0o666)
        os.write(fd, data)
        os.close(fd)
        os.rename(f"{base}/tmp/{mid}.tmp", f"{base}/ready/{999:06d}.{now:020d}.{mid}.0.msg")
    middle = time.perf_counter_ns()
    names = os.listdir(f"{base}/ready")
    heapq.heapify(names)
    while names:
        name = heapq.heappop(names)
        priority, published, mid, requeues, _ = name.split(".")
        work = f"{base}/work/{name[:-4]}.{time.time_ns() + 600 * 10**9:020d}.{os.urandom(6).hex()}.msg"
        os.rename(f"{base}/ready/{name}", work)
        fd = os.open(work, os.O_RDONLY)
        data = os.read(fd, 1 << 16)
        os.read(fd, 1 << 16)
        os.close(fd)
        json.loads(data)
        os.unlink(work)
    return (middle - start) / n / 1000, (time.perf_counter_ns() - middle) / n / 1000


def whole(b: Broker, n: int) -> tuple[float, float]:
    start = time.perf_counter_ns()
    for i in range(n):
        b.publish("q", f"message {i:07d}")
    middle = time.perf_counter_ns()
    for _ in range(n):
        b.ack(b.consume("q")[0])
    return (middle - start) / n / 1000, (time.perf_counter_ns() - middle) / n / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dir", default="/dev/shm", help="where to make the queue (default /dev/shm)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ddmq-steps-", dir=args.dir)
    try:
        b = Broker(base, create=True)
        b.create_queue("q", durable=False)
        published = publish_steps(b, args.n)
        consumed = consume_steps(b, args.n)
        pub, con = whole(b, args.n)
        bare_pub, bare_con = bare(f"{base}/bare", args.n)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for title, spent, total in (("publish", published, pub), ("consume + ack", consumed, con)):
        print(f"\n{title}: {sum(spent.values()) / args.n / 1000:.1f} µs per message in steps, "
              f"{total:.1f} µs through the API")
        for key, ns in spent.items():
            print(f"  {key:24s} {ns / args.n / 1000:6.1f} µs")
    print(f"\nbare loop (see bare()): publish {bare_pub:.1f} µs, consume + ack {bare_con:.1f} µs, "
          f"total {bare_pub + bare_con:.1f} µs; ddmq through the API: {pub + con:.1f} µs "
          f"({(pub + con) / (bare_pub + bare_con):.2f}×)")


if __name__ == "__main__":
    main()

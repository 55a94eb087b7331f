"""One measurement, run inside the virtual environment of the implementation measured.

``benchmarks.workloads`` starts this script (by its path) once per measurement with the
interpreter of the right venv, so every implementation runs in its own
environment and a measurement never shares a process with another one:

    python worker.py w1 --impl ddmq --root DIR --n 5000 [--durable]
    python worker.py w3 --impl ddmq --root DIR --n 5000 --consumers 4
    python worker.py w3 --impl ddmq --root MNT_A/q --root-b MNT_B/q ...   # across two mounts

It prints one JSON object on stdout. Timing starts after the queue exists
(set-up is not timed) and ends when the last message is acked; the bodies
received are checked against those sent (every message back exactly once).

With ``--root-b`` (the same queue directory seen through a second mount of
the shared filesystem: another "node"), W1 publishes through ``--root`` and
consumes through ``--root-b``, and W3's publisher uses ``--root`` while its
consumers alternate between the two, starting with ``--root``; W3 then also
reports how many messages each mount consumed and the latency from each
publish returning to its body being consumed.

Implementations (``--impl``):
  ddmq       the working tree (``Broker``), durable on or off
  ddmq014    ddmq 0.9.14 from PyPI (``broker``), its defaults (clean=True)
  ddmq014nc  ddmq 0.9.14 with clean=False on every call (its fast path)
  dirq       dirq.QueueSimple (Directory::Queue), the usual add / lock+get+remove loop
  dirq-eperm the same, with EPERM from its lock's link read as a lost race (as sshfs reports one)
  rabbit     RabbitMQ through pika: durable queue, persistent messages,
             publisher confirms, manual acks (basic_consume, prefetch 100)
  rabbit-transient  the same without durability: transient queue and
             messages, no confirms, manual acks
  floor      only the system calls of one publish + claim + ack:
             open(O_CREAT|O_EXCL)/write/close/rename, rename, unlink
             (``--durable`` adds fsync of the file and of the directory)
  floor-read the floor plus reading the claimed message before the ack:
             open(O_RDONLY), read(65536) until it returns b"", close, and the
             bytes checked against the body (every consumer reads what it
             claimed); measured with durable off only
"""
from __future__ import annotations

import argparse
import collections
import errno
import json
import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
import warnings

QUEUE = "bench"


# ----------------------------------------------------------------- adapters
class Adapter:
    """publish(body) and take() -> the bodies of messages claimed and acked in one pass."""

    def __init__(self, args: argparse.Namespace, root: str | None = None):
        self.args = args
        self.root = root or args.root  # a queue on a shared filesystem is reached through one of two mounts

    def setup(self) -> None:
        """Create the queue (called once, before timing, in the parent)."""

    def open(self) -> None:
        """Per-process initialisation (after fork)."""

    def publish(self, body: str) -> None:
        raise NotImplementedError

    def publish_batch(self, bodies: list[str]) -> None:
        """Publish ``bodies`` as one batch (``--batch``): by default one at a time."""
        for body in bodies:
            self.publish(body)

    def take(self):
        raise NotImplementedError

    def take_over(self, publisher: Adapter) -> None:
        """Consume, in this process, what ``publisher`` (the same queue through another mount) published.

        A queue finds its messages by itself; only the floor, which keeps no
        listing, needs the names handed over.
        """

    def close(self) -> None:
        pass

    def teardown(self) -> None:
        pass


class Ddmq(Adapter):
    def setup(self) -> None:
        from ddmq import Broker

        Broker(self.root, create=True).create_queue(QUEUE, exist_ok=True, durable=self.args.durable)

    def open(self) -> None:
        from ddmq import Broker

        self.b = Broker(self.root)

    def publish(self, body: str) -> None:
        self.b.publish(QUEUE, body)

    def publish_batch(self, bodies: list[str]) -> None:
        self.b.publish_many(QUEUE, bodies)  # one durability barrier for the batch

    def take(self):
        b = self.b
        while True:
            msgs = b.consume(QUEUE)
            if not msgs:
                return
            b.ack(msgs[0])
            yield msgs[0].message


class Ddmq014(Adapter):
    clean = True

    def setup(self) -> None:
        self.open()
        self.b.create_queue(QUEUE)

    def open(self) -> None:
        warnings.simplefilter("ignore")  # yaml.load() without a Loader
        import ddmq

        self.b = ddmq.broker(self.root, create=True)

    def publish(self, body: str) -> None:
        self.b.publish(QUEUE, body, clean=self.clean)

    def take(self):
        b = self.b
        while True:
            m = b.consume(QUEUE, clean=self.clean)
            if m is None:
                return
            b.ack(m)
            yield m.message


class Ddmq014NoClean(Ddmq014):
    clean = False


class Dirq(Adapter):
    def setup(self) -> None:
        self.open()

    def open(self) -> None:
        from dirq.QueueSimple import QueueSimple

        self.q = QueueSimple(os.path.join(self.root, QUEUE))

    def publish(self, body: str) -> None:
        self.q.add(body)

    def take(self):
        q = self.q
        for name in q:
            if not q.lock(name):
                continue
            data = q.get(name)
            q.remove(name)
            yield data.decode() if isinstance(data, bytes) else data


class DirqLostRaceEperm(Dirq):
    """dirq, with a failed lock whose errno is EPERM read as a lost race, as EEXIST and ENOENT already are.

    dirq locks an element by hard-linking it to NAME.lck; the consumer that
    loses gets EEXIST (or ENOENT) locally, but EPERM over SFTP, whose link
    request can only say "failure", and dirq raises that, so a consumer dies
    at the first race between two mounts. This variant measures what dirq
    would cost on sshfs with that one line of its lock fixed.
    """

    def take(self):
        q = self.q
        for name in q:
            try:
                locked = q.lock(name)
            except OSError as exc:
                if exc.errno != errno.EPERM:
                    raise
                locked = False
            if not locked:
                continue
            data = q.get(name)
            q.remove(name)
            yield data.decode() if isinstance(data, bytes) else data


class Rabbit(Adapter):
    durable = True

    def _connect(self):
        import pika

        params = pika.ConnectionParameters(host="127.0.0.1", port=self.args.amqp_port,
                                           heartbeat=0, blocked_connection_timeout=300)
        conn = pika.BlockingConnection(params)
        return conn, conn.channel()

    @property
    def qname(self) -> str:
        return f"bench-{os.path.basename(self.root.rstrip('/'))}"

    def setup(self) -> None:
        conn, ch = self._connect()
        ch.queue_declare(self.qname, durable=self.durable)
        ch.queue_purge(self.qname)
        conn.close()

    def open(self) -> None:
        import pika

        self.conn, self.ch = self._connect()
        if self.durable and self.args.batch > 1:
            self._batch_confirms()
        elif self.durable:
            self.ch.confirm_delivery()  # basic_publish now returns only once the broker confirmed
        self.ch.basic_qos(prefetch_count=100)
        self.props = pika.BasicProperties(delivery_mode=2 if self.durable else 1)
        self._gen = None

    def publish(self, body: str) -> None:
        self.ch.basic_publish("", self.qname, body.encode(), properties=self.props)

    def _batch_confirms(self) -> None:
        """Confirms for a whole batch: publish it all, then wait until the broker confirmed every message.

        pika's BlockingChannel waits for each confirm in basic_publish, so the
        batch goes through the asynchronous channel underneath it (``_impl``),
        as a client using SelectConnection or aio-pika would publish.
        """
        self.unconfirmed: set[int] = set()
        self.sent_tags = 0
        selected = []

        def on_confirm(frame) -> None:
            method = frame.method
            if type(method).__name__ == "Nack":
                raise RuntimeError(f"RabbitMQ nacked delivery {method.delivery_tag}")
            if method.multiple:
                self.unconfirmed = {t for t in self.unconfirmed if t > method.delivery_tag}
            else:
                self.unconfirmed.discard(method.delivery_tag)

        self.ch._impl.confirm_delivery(ack_nack_callback=on_confirm, callback=selected.append)
        while not selected:
            self.conn.process_data_events(time_limit=0.01)

    def publish_batch(self, bodies: list[str]) -> None:
        if not self.durable:  # the caller publishes batches of 1 with publish()
            return super().publish_batch(bodies)
        for body in bodies:
            self.ch._impl.basic_publish("", self.qname, body.encode(), properties=self.props)
            self.sent_tags += 1
            self.unconfirmed.add(self.sent_tags)
        while self.unconfirmed:
            self.conn.process_data_events(time_limit=0.001)

    def take(self):
        if self._gen is None:
            self._gen = self.ch.consume(self.qname, auto_ack=False, inactivity_timeout=self.args.idle)
        for method, _props, body in self._gen:
            if method is None:
                return
            self.ch.basic_ack(method.delivery_tag)
            yield body.decode()

    def close(self) -> None:
        if self._gen is not None:
            self.ch.cancel()
        self.conn.close()

    def teardown(self) -> None:
        conn, ch = self._connect()
        ch.queue_delete(self.qname)
        conn.close()


class RabbitTransient(Rabbit):
    durable = False


class Floor(Adapter):
    """The system calls of publish + claim + ack and nothing else: the floor for any file queue."""

    FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

    def setup(self) -> None:
        for d in ("tmp", "ready", "work"):
            os.makedirs(os.path.join(self.root, QUEUE, d), exist_ok=True)

    def open(self) -> None:
        base = os.path.join(self.root, QUEUE)
        self.tmp, self.ready, self.work = (os.path.join(base, d) for d in ("tmp", "ready", "work"))
        self.names = collections.deque()
        self.i = 0
        self.pid = os.getpid()

    def take_over(self, publisher: Adapter) -> None:
        assert isinstance(publisher, Floor)
        self.names = publisher.names

    def publish(self, body: str) -> None:
        self.i += 1
        name = f"{self.pid}.{self.i:09d}"
        tmp = f"{self.tmp}/{name}.tmp"
        fd = os.open(tmp, self.FLAGS, 0o644)
        os.write(fd, body.encode())
        if self.args.durable:
            os.fsync(fd)
        os.close(fd)
        os.rename(tmp, f"{self.ready}/{name}.msg")
        if self.args.durable:
            dfd = os.open(self.ready, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(dfd)
            os.close(dfd)
        self.names.append((name, body))

    def take(self):
        while self.names:
            name, body = self.names.popleft()
            work = f"{self.work}/{name}.x.msg"
            os.rename(f"{self.ready}/{name}.msg", work)
            os.unlink(work)
            yield body


class FloorRead(Floor):
    """The floor plus reading the message claimed: the floor a real queue is compared against.

    Every consumer reads the message it claimed (ddmq, dirq and RabbitMQ all
    deliver the body); the plain Floor stays as first defined.
    """

    def take(self):
        while self.names:
            name, body = self.names.popleft()
            work = f"{self.work}/{name}.x.msg"
            os.rename(f"{self.ready}/{name}.msg", work)
            fd = os.open(work, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(fd)
            data = b"".join(chunks)
            if data != body.encode():
                raise RuntimeError(f"{work}: read {data[:60]!r}, expected {body[:60]!r}")
            os.unlink(work)
            yield data.decode()


ADAPTERS = {
    "ddmq": Ddmq, "ddmq014": Ddmq014, "ddmq014nc": Ddmq014NoClean, "dirq": Dirq, "dirq-eperm": DirqLostRaceEperm,
    "rabbit": Rabbit, "rabbit-transient": RabbitTransient, "floor": Floor, "floor-read": FloorRead,
}


# ---------------------------------------------------------------- helpers
def bodies(n: int) -> list[str]:
    return [f"message {i:07d}" for i in range(n)]


def verify(sent: list[str], got: list[str]) -> dict:
    counts = collections.Counter(got)
    expected = set(sent)
    return {
        "received": len(got),
        "unique": len(counts),
        "missing": len(expected - counts.keys()),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "unexpected": len(counts.keys() - expected),
        "ok": len(got) == len(sent) and counts.keys() == expected,
    }


def proc_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds of another process (the RabbitMQ server), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- workloads
def w1(args: argparse.Namespace) -> dict:
    """One process: publish n, then consume and ack them all (through the second mount, given one)."""
    adapter = ADAPTERS[args.impl](args)
    adapter.setup()
    adapter.open()
    taker = adapter
    if args.root_b:
        taker = ADAPTERS[args.impl](args, args.root_b)
        taker.open()
        taker.take_over(adapter)
    sent = bodies(args.n)
    got: list[str] = []
    server0 = proc_cpu(args.server_pid)
    cap = args.cap or float("inf")  # a slow implementation is stopped after this many seconds
    capped = False
    published = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for start in range(0, len(sent), args.batch):
        if args.batch == 1:
            adapter.publish(sent[start])
        else:
            adapter.publish_batch(sent[start:start + args.batch])
        published = min(start + args.batch, len(sent))
        if time.perf_counter() - t0 > cap:
            capped = True
            break
    t1 = time.perf_counter()
    empty = 0
    while not capped and len(got) < published and empty < 2:
        before = len(got)
        for body in taker.take():
            got.append(body)
            if len(got) >= published:
                break
            if time.perf_counter() - t0 > cap:
                capped = True
                break
        empty = empty + 1 if len(got) == before else 0
    t2 = time.perf_counter()
    cpu = time.process_time() - c0
    server1 = proc_cpu(args.server_pid)
    adapter.close()
    if taker is not adapter:
        taker.close()
    if not capped:
        adapter.teardown()
    result = {
        "publish_s": t1 - t0, "consume_s": t2 - t1, "total_s": t2 - t0, "cpu_s": cpu,
        "server_cpu_s": None if server0 is None or server1 is None else server1 - server0,
        **verify(sent, got),
    }
    if capped:
        result.update({"capped": True, "cap_s": cap, "published_before_cap": published,
                       "consumed_before_cap": len(got), "ok": None})
    return result


def _reporting_failure(role: str, target):
    """Run target in a W3 child; an exception is sent to the parent first, which stops the run with it.

    Paths in the message are shortened to the mount they were reached through (A: --root, B: --root-b).
    """
    def run(*args):
        out, options = args[-1], args[0]
        try:
            target(*args)
        except BaseException as exc:
            text = f"{role}: {type(exc).__name__}: {exc}".replace(options.root, "A")
            out.put(("failed", text.replace(options.root_b, "B") if options.root_b else text))
            raise
    return run


def _w3_consumer(args, root, start, stop_at, counter, out) -> None:
    adapter = ADAPTERS[args.impl](args, root)
    adapter.open()
    got, at = [], []
    start.wait()
    deadline = time.monotonic() + args.deadline
    while counter.value < stop_at and time.monotonic() < deadline:
        n = 0
        for body in adapter.take():
            got.append(body)
            at.append(time.time())
            n += 1
            with counter.get_lock():
                counter.value += 1
        if n == 0:
            time.sleep(0.001)
    adapter.close()
    out.put((root, got, at, time.process_time()))


def _w3_publisher(args, start, out) -> None:
    adapter = ADAPTERS[args.impl](args)
    adapter.open()
    start.wait()
    visible = []  # when each publish returned: its message can be consumed from then on
    for body in bodies(args.n):
        adapter.publish(body)
        visible.append(time.time())
    adapter.close()
    out.put(("publisher", time.perf_counter(), time.process_time(), visible))


def w3(args: argparse.Namespace) -> dict:
    """One publisher and ``--consumers`` consumer processes at once."""
    ctx = mp.get_context("fork")
    adapter = ADAPTERS[args.impl](args)
    adapter.setup()
    start = ctx.Barrier(args.consumers + 2)
    counter = ctx.Value("q", 0)
    out = ctx.Queue()
    roots = [args.root, args.root_b] if args.root_b else [args.root]
    procs = [ctx.Process(target=_reporting_failure(f"consumer on {'AB'[i % len(roots)]}", _w3_consumer),
                         args=(args, roots[i % len(roots)], start, args.n, counter, out))
             for i in range(args.consumers)]
    procs.append(ctx.Process(target=_reporting_failure("publisher", _w3_publisher), args=(args, start, out)))
    for p in procs:
        p.start()
    server0 = proc_cpu(args.server_pid)
    start.wait()
    t0 = time.perf_counter()
    results = []
    while len(results) < len(procs):
        try:
            r = out.get(timeout=1)
        except queue.Empty:
            r = None
        failed = r[1] if r and r[0] == "failed" else next(
            (f"a process exited with {p.exitcode} and said nothing" for p in procs if p.exitcode), None)
        if failed or time.perf_counter() - t0 > args.deadline + 60:
            for p in procs:
                p.terminate()
            raise RuntimeError(failed or f"W3 did not finish in {args.deadline + 60:.0f} s")
        if r:
            results.append(r)
    t1 = time.perf_counter()
    for p in procs:
        p.join()
    server1 = proc_cpu(args.server_pid)
    got: list[str] = []
    consumed_at: dict[str, float] = {}
    per_consumer = []
    per_mount = {root: 0 for root in roots}
    publish_end = None
    visible: list[float] = []
    cpu = 0.0
    for r in results:
        if r[0] == "publisher":
            publish_end, visible = r[1], r[3]
            cpu += r[2]
        else:
            got.extend(r[1])
            consumed_at.update(zip(r[1], r[2]))
            per_consumer.append(len(r[1]))
            per_mount[r[0]] += len(r[1])
            cpu += r[3]
    adapter.teardown()
    result = {
        "total_s": t1 - t0, "publish_s": (publish_end or t1) - t0, "cpu_s": cpu,
        "server_cpu_s": None if server0 is None or server1 is None else server1 - server0,
        "per_consumer": per_consumer, **verify(bodies(args.n), got),
    }
    if args.root_b:
        latency = sorted(consumed_at[b] - t for b, t in zip(bodies(args.n), visible) if b in consumed_at)
        result.update({"consumed_a": per_mount[args.root], "consumed_b": per_mount[args.root_b],
                       "latency_s": {"median": statistics.median(latency) if latency else None,
                                     "p90": latency[int(0.9 * (len(latency) - 1))] if latency else None,
                                     "max": latency[-1] if latency else None}})
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=("w1", "w3"))
    p.add_argument("--impl", required=True, choices=sorted(ADAPTERS))
    p.add_argument("--root", required=True)
    p.add_argument("--root-b", help="the same directory through a second mount: W1 consumes through it, "
                   "and every other W3 consumer uses it")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--durable", action="store_true")
    p.add_argument("--batch", type=int, default=1, help="W1: publish this many at a time (ddmq: publish_many; "
                   "RabbitMQ persistent: wait for the confirms of a whole batch)")
    p.add_argument("--consumers", type=int, default=4)
    p.add_argument("--amqp-port", type=int, default=5672)
    p.add_argument("--server-pid", type=int, help="RabbitMQ server pid, to count its CPU time")
    p.add_argument("--idle", type=float, help="RabbitMQ: a pass ends after this long without a message "
                   "(default 2 s for W1, 0.05 s for W3)")
    p.add_argument("--cap", type=float, help="W1: stop after this many seconds (for ddmq 0.9.14)")
    p.add_argument("--deadline", type=float, default=600.0, help="W3: consumers give up after this")
    args = p.parse_args()
    if args.idle is None:
        args.idle = 2.0 if args.workload == "w1" else 0.05
    result = {"workload": args.workload, "impl": args.impl, "n": args.n, "durable": args.durable}
    result.update(w1(args) if args.workload == "w1" else w3(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

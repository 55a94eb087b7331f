"""Holds one ddmq queue at a chosen length for ``benchmarks.scale``, inside the venv of the tree measured.

    python keeper.py ROOT QUEUE

``benchmarks.scale`` starts this script by its path with the interpreter of
the tree under test, so the queue is filled and topped up by that tree's own
library, whatever directory layout it writes (the measuring side never looks
inside a queue, so it works unchanged before and after a layout change).
The queue is created with ``durable: false``: a million messages are filled
in minutes, not hours, and the commands measured then publish the same way.

One request per line on stdin, one line of JSON per request on stdout:

    add N    publish N messages in one ``publish_many``   -> {"seconds": ...}
    take     consume and ack one message                   -> {"taken": 0 or 1}

A long-lived process because topping up after every measured command must
cost nothing measured, and starting an interpreter each time would take
longer than the commands themselves.
"""
from __future__ import annotations

import json
import sys
import time

from ddmq import Broker


def main() -> None:
    root, queue = sys.argv[1], sys.argv[2]
    broker = Broker(root, create=True)
    broker.create_queue(queue, exist_ok=True, durable=False)
    sent = 0
    for line in sys.stdin:
        request, _, count = line.strip().partition(" ")
        started = time.perf_counter()
        if request == "add":
            n = int(count)
            broker.publish_many(queue, [f"message {i}" for i in range(sent, sent + n)])
            sent += n
            answer: dict = {"seconds": time.perf_counter() - started}
        elif request == "take":
            answer = {"taken": len(broker.consume(queue, n=1, ack=True))}
        else:
            answer = {"error": f"unknown request {line.strip()!r}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

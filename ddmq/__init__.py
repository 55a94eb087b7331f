"""ddmq, the Dead Drop Messaging Queue: a serverless message queue in a directory.

    from ddmq import broker
    b = broker('/path/to/rootdir', create=True)
    b.publish(queue='queue_name', message='Hello World!')
    msg = b.consume(queue='queue_name')
    print(msg[0].message)

Besides the broker and its errors, the names below are what tools built on
ddmq (``ddmq_hpc`` among them) may rely on: :func:`resolve_root` (where a
command's root is), :func:`check_queue_name`, :func:`storage_error` (an
OSError as a one-line StorageError), :func:`loads_body` (strict JSON for a
body) and the limits the core enforces. The command-line conventions every
ddmq command follows are in :mod:`ddmq.console`.
"""
from . import broker
from .broker import Broker, CleanReport, resolve_root
from .errors import (
    DdmqError, ForeignFiles, InvalidQueueName, LeaseLost, NotARoot, NotFound, PartlyPublished, QueueExists,
    QueueNotFound, RootNotFound, SettingsError, StorageError, UsageError, storage_error,
)
from .layout import MAX_PRIORITY, check_queue_name
from .message import MAX_DEPTH, Message, loads_body
from .settings import MAX_SECONDS, MIN_SECONDS

__version__ = "1.0.0.dev0"  # the one place it is written: pyproject.toml reads it from here

__all__ = [
    "Broker", "broker", "Message", "CleanReport", "DdmqError", "UsageError", "InvalidQueueName",
    "SettingsError", "NotFound", "RootNotFound", "NotARoot", "QueueNotFound", "QueueExists",
    "LeaseLost", "ForeignFiles", "StorageError", "PartlyPublished", "MAX_DEPTH", "loads_body", "__version__",
    "resolve_root", "check_queue_name", "storage_error", "MAX_PRIORITY", "MAX_SECONDS", "MIN_SECONDS",
]

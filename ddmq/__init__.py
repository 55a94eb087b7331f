"""ddmq, the Dead Drop Messaging Queue: a serverless message queue in a directory.

    from ddmq import broker
    b = broker('/path/to/rootdir', create=True)
    b.publish(queue='queue_name', message='Hello World!')
    msg = b.consume(queue='queue_name')
    print(msg[0].message)
"""
from . import broker
from .broker import Broker, CleanReport
from .errors import (
    DdmqError, ForeignFiles, InvalidQueueName, LeaseLost, NotARoot, NotFound, QueueExists,
    QueueNotFound, RootNotFound, SettingsError, StorageError, UsageError,
)
from .message import MAX_DEPTH, Message, loads_body

__version__ = "1.0.0.dev0"  # the one place it is written: pyproject.toml reads it from here

__all__ = [
    "Broker", "broker", "Message", "CleanReport", "DdmqError", "UsageError", "InvalidQueueName",
    "SettingsError", "NotFound", "RootNotFound", "NotARoot", "QueueNotFound", "QueueExists",
    "LeaseLost", "ForeignFiles", "StorageError", "MAX_DEPTH", "loads_body", "__version__",
]

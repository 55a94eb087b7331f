"""The ``ddmq`` logger: what a person debugging a cluster needs to see, on the rare paths only.

ddmq logs when it dead-letters a message, requeues an expired lease, loses a
race to another client, or corrects its clock for the file server's. Like
flufl.lock, it adds a NullHandler to its logger and leaves the rest to the
application: nothing is printed unless the application (or a command's
``-v``/``DDMQ_LOG``) configures logging. The ``logging`` module is imported on
first use, not at import: a command-line tool that never meets a rare path
does not pay for it at start-up.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

NAME = "ddmq"
_logger: logging.Logger | None = None


def logger() -> logging.Logger:
    """The ``ddmq`` logger, with a NullHandler so that a library never prints by itself."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger(NAME)
        _logger.addHandler(logging.NullHandler())
    return _logger

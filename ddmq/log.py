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
    from typing import Callable

NAME = "ddmq"
_logger: logging.Logger | None = None
_on_first_use: list[Callable[[logging.Logger], None]] = []


def when_used(configure: Callable[[logging.Logger], None]) -> None:
    """Run ``configure(logger)`` when the logger is first needed, or now if it already was.

    How a command shows records on stderr, set up without importing
    ``logging`` at start-up: most runs never log anything.
    """
    if _logger is not None:
        configure(_logger)
    elif configure not in _on_first_use:
        _on_first_use.append(configure)


def logger() -> logging.Logger:
    """The ``ddmq`` logger, with a NullHandler so that a library never prints by itself."""
    global _logger
    if _logger is None:
        import logging

        _logger = logging.getLogger(NAME)
        _logger.addHandler(logging.NullHandler())
        for configure in _on_first_use:
            configure(_logger)
        _on_first_use.clear()
    return _logger

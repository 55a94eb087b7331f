"""Skip a test this machine cannot run, or fail it where CI says the machine must run it.

Tests that need SLURM, FUSE (sshfs, a tmpfs to fill), libfaketime or root
skip on a developer's machine without them. CI installs and starts all of
them and sets ``DDMQ_REQUIRE_SLURM``, ``DDMQ_REQUIRE_FUSE``,
``DDMQ_REQUIRE_FAKETIME`` and ``DDMQ_REQUIRE_ROOT`` to 1: there a missing
capability is a failure, so a broken harness cannot pass as a green run of
skipped tests. The rule lives here, once.
"""
from __future__ import annotations

import os

import pytest

CAPABILITIES = ("slurm", "fuse", "faketime", "root")


def need(capability: str, problem: str | None) -> None:
    """Go on if ``problem`` is None; else skip, or fail if ``DDMQ_REQUIRE_<CAPABILITY>=1``."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; one of {', '.join(CAPABILITIES)}")
    if problem is None:
        return
    variable = f"DDMQ_REQUIRE_{capability.upper()}"
    if os.environ.get(variable) == "1":
        pytest.fail(f"{variable}=1 but {problem}", pytrace=False)
    pytest.skip(problem)

"""What the tests share that is not a fixture: imported as ``tests.support.<module>``.

``workers`` and ``crashpoint`` also run as scripts (``python -m
tests.support.workers``), started by the tests as separate processes.
"""

"""The test suite, a package so that its helpers import by their full name.

``tests.support.<module>`` is importable from the tests, from the worker
scripts they start (``python -m tests.support.workers``: the checkout is on
PYTHONPATH, see conftest), and from tools outside the suite that plant the
same hostile files (``benchmarks/torture.py``).
"""

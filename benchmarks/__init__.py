"""Tools run by hand, whose figures go into docs/: never part of the test suite.

A package, run from the checkout as ``python -m benchmarks.<tool>`` (see
README.md here), so that the tools share their modules by import.
"""

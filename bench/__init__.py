"""Benchmarks for Podium, run with ``scripts/bench`` (see :mod:`bench.http_bench`).

Not installed with the package: ``scripts/bench`` puts the repository root on
``PYTHONPATH``. Load is generated in separate processes (:mod:`bench.loadgen`)
so the node under test keeps its core to itself.
"""

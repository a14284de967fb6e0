"""Benchmarks of clipsift: throughput and memory as ratios measured side by side in one run.

Run from the repository root: ``python -m tests.benchmarks.run --out bench-output`` (``make bench``).
Nothing here asserts on a timing; ``test_bench_smoke.py`` only checks that every benchmark still
produces finite numbers at toy sizes.
"""

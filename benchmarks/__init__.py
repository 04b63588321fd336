"""Benchmarks: celeriac against Celery, Dramatiq, Huey, RQ, arq and Taskiq on one Redis.

Run them with ``scripts/bench`` (``--quick`` for a short development run). This package is
not a test suite: it measures, prints tables and writes result files, and never asserts a
time. See docs/benchmarks.md for what is measured and how.

Layout:

- ``runner`` (celeriac's interpreter): starts a private redis-server, runs every
  measurement in the right interpreter as a subprocess, aggregates, writes the results.
- ``driver`` (any interpreter): one measurement of one system, printed as one JSON line.
- ``adapters/<system>``: the same few operations for each system, plus its tasks; the
  workers import the same module.
- ``probes``: what the tasks call to count and stamp themselves (os, time, redis only).
- ``common``: the driver's helpers: statistics, worker processes (adds psutil).
- ``redis_server``: the run's private redis-server.
- ``report`` writes docs/benchmarks.md; ``charts`` draws the PNGs (needs matplotlib).
- ``profile_celeriac``: where celeriac's own time goes (cProfile, ablations, Lua costs).
"""

"""The telemetry handler's parts, each timed on its own: parsing, encoding the rows, storing a batch.

Run with ``python -m bench.telemetry_parts [--batches N] [--repeat N]``. The batches are
:func:`bench.telemetry.make_batches`'s (1000 events over 5 accounts, three KPIs, small metadata). Each part runs
``repeat`` times per batch in this process, on one thread, and prints the CPU milliseconds per batch (best and
median, ``time.thread_time``) and the wall milliseconds of the median:

* ``parse``: :func:`quantapilot.lifecycle.telemetry_body.parse_telemetry` of the request's bytes;
* ``encode``: :func:`quantapilot.lifecycle.telemetry.encode_events` (the rows as the driver takes them);
* ``store``: what the API's store does (``one_writer``, one Core transaction, :func:`store_batch`, commit) on a
  fresh SQLite file with the schema, ``encode`` included.

No server is started: the realization signals that follow a store in the API are not in these figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.engine import Engine

from bench.common import machine_line
from bench.telemetry import make_batches
from quantapilot.db import create_all, make_engine, one_writer
from quantapilot.lifecycle.telemetry import encode_events, store_batch
from quantapilot.lifecycle.telemetry_body import TelemetryIn, parse_telemetry


def timed(part: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """(best CPU ms, median CPU ms, median wall ms) of ``repeat`` calls of ``part``."""
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(repeat):
        c0, w0 = time.thread_time(), time.perf_counter()
        part()
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return min(cpu), statistics.median(cpu), statistics.median(wall)


def store(engine: Engine, events: Sequence[TelemetryIn]) -> None:
    """Store a batch as the API does: behind the process's SQLite writers, in one Core transaction."""
    with one_writer(engine), engine.begin() as connection:
        store_batch(connection=connection, workspace="bench", events=events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=5, help="distinct batches of 1000 events (default 5)")
    parser.add_argument("--repeat", type=int, default=15, help="runs of each part per batch (default 15)")
    args = parser.parse_args()
    batches = make_batches(args.batches, 5)
    bodies = [json.dumps({"events": b}).encode() for b in batches]
    parsed = [parse_telemetry(body) for body in bodies]
    results: dict[str, list[tuple[float, float, float]]] = {"parse": [], "encode": [], "store": []}
    with tempfile.TemporaryDirectory(prefix="qp-bench-parts-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'qp.db'}")
        create_all(engine)
        try:
            for body, events in zip(bodies, parsed, strict=True):
                results["parse"].append(timed(functools.partial(parse_telemetry, body), args.repeat))
                encode = functools.partial(encode_events, engine.dialect, "bench", events)
                results["encode"].append(timed(encode, args.repeat))
                results["store"].append(timed(functools.partial(store, engine, events), args.repeat))
        finally:
            engine.dispose()
    print(machine_line())
    print(f"{'part (per batch of 1000)':<28} {'CPU ms best':>12} {'CPU ms median':>14} {'wall ms median':>15}")
    for part, rows in results.items():
        best = min(r[0] for r in rows)
        median_cpu = statistics.median(r[1] for r in rows)
        median_wall = statistics.median(r[2] for r in rows)
        print(f"{part:<28} {best:>12.2f} {median_cpu:>14.2f} {median_wall:>15.2f}")


if __name__ == "__main__":
    main()

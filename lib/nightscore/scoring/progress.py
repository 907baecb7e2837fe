"""Scoring progress: a row counter the actors add to, and the driver's progress line.

Kept free of heavy imports: the counter is a Ray actor, a process of its own, and imports this
module alone.
"""
from __future__ import annotations

import threading
import time
from typing import Any


class RowCounter:
    """Rows scored so far over all actors (a Ray actor), for the driver's progress line."""

    def __init__(self) -> None:
        self.rows = 0

    def add(self, rows: int) -> None:
        self.rows += rows

    def total(self) -> int:
        return self.rows


def report_progress(counter: Any, input_rows: int, stop: threading.Event, every: float = 30.0,
                    stalled_after: float = 300.0) -> None:
    """One line every `every` seconds while scoring runs: rows done, rows/s and time left (quarantined
    rows are never scored, so a run ends a little short of the input count), and a warning when
    no row moved for `stalled_after` seconds: an actor lost with its node waits for a free CPU/GPU."""
    import ray

    started = time.perf_counter()
    last, moved = -1, started
    while not stop.wait(every):
        try:
            done = ray.get(counter.total.remote())
        except ray.exceptions.RayError:  # the counter is gone with its node: the run itself goes on
            return
        now = time.perf_counter()
        if done != last:
            last, moved = done, now
        elif now - moved >= stalled_after:
            print(f"[score] no rows scored for {(now - moved) / 60:.0f} min: an actor is waiting for a node with a "
                  "free CPU/GPU (a lost node not yet replaced?); nothing is committed until the run completes, and "
                  "stopping it is safe", flush=True)
            continue
        if not done:
            print(f"[score] 0 of {input_rows:,} rows: the actors are still starting", flush=True)
            continue
        rate = done / (now - started)
        seconds = (input_rows - done) / rate
        left = ("finishing" if done >= input_rows else f"about {seconds / 60:.0f} min left" if seconds >= 120
                else f"about {seconds:.0f} s left")
        print(f"[score] {done:,} of {input_rows:,} rows ({done / max(input_rows, 1):.0%}), {rate:.0f} rows/s, {left}",
              flush=True)

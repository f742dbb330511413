"""The numbered, timed steps a demo prints as it goes (`speechtune demo`, `speechtune demo --task tts`)."""
from __future__ import annotations

import time


class Steps:
    """Wall time of each step, shown as it goes and in the final summary."""

    def __init__(self, console):
        self.console, self.times, self._t = console, {}, None

    def start(self, n: int, title: str) -> None:
        self.console.rule(f"[bold]{n}. {title}")
        self._t, self._name = time.perf_counter(), title

    def done(self) -> float:
        self.times[self._name] = time.perf_counter() - self._t
        return self.times[self._name]


def timing_rows(table, report: dict) -> None:
    """The last rows of a demo's summary table: each step's seconds, the total, and the paths it wrote."""
    for step, secs in report["step_seconds"].items():
        table.add_row(f"time: {step}", f"{secs:.0f} s")
    table.add_row("total", f"{report['total_seconds']:.0f} s")
    for k, v in report["paths"].items():
        table.add_row(k, v)

"""The CLI's consoles, its one progress view for every stage, and the per-stage report line.

Part of the CLI layer (the only layer that prints).
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from neuron_explainer.stages.runtime import StageReport

console = Console(stderr=True)
"""Status, progress and errors (stderr)."""
out = Console(soft_wrap=True)
"""Results: tables and printouts (stdout)."""


def say(message: str) -> None:
    """Print a status line as it is (no markup, no highlighting)."""
    console.print(message, highlight=False, markup=False, soft_wrap=True)


class StageView:
    """One progress view for every stage of a command: a bar per stage with ETA, and LLM token counts.

    On a terminal the bars redraw in place; elsewhere (CI logs, files) a line is printed at most every
    30 s and at the end of each stage.
    """

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description:<9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[tokens]}"),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.tasks: dict[str, Any] = {}
        self.pool: Any = None
        """The run's BackendPool, whose back ends' token counts the view shows."""
        self._last_line = 0.0
        self._mark = (0, 0)

    def __enter__(self) -> StageView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def tokens(self) -> tuple[int, int]:
        """Prompt and completion tokens sent through every back end so far."""
        return self.pool.tokens() if self.pool is not None else (0, 0)

    def stage_tokens(self) -> tuple[int, int]:
        """Tokens since the previous call (a stage's own)."""
        now = self.tokens()
        delta = (now[0] - self._mark[0], now[1] - self._mark[1])
        self._mark = now
        return delta

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report `done` of `total` units of `stage`."""
        prompt, completion = self.tokens()
        tokens = f"{prompt:,} prompt + {completion:,} completion tokens" if prompt or completion else ""
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, tokens=tokens)
        self.progress.update(self.tasks[stage], completed=done, total=total, tokens=tokens)
        now = time.monotonic()
        if not console.is_terminal and (done == total or now - self._last_line >= 30):
            self._last_line = now
            say(f"{stage}: {done}/{total}" + (f" ({tokens})" if tokens else ""))


def cost(prices: dict[str, Any], pool: Any) -> float | None:
    """Total cost from `prices` (spec -> USD per million prompt / completion tokens), None if unpriced."""
    total, priced = 0.0, False
    for spec, backend in pool.bare.items():
        price = prices.get(spec)
        usage = getattr(backend, "usage", None) or {}
        if price is not None:
            priced = True
            total += price.cost(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
    return total if priced else None


def print_report(report: StageReport, view: StageView | None = None) -> None:
    """One line saying what a stage did (with its LLM tokens when a view is open), then its first failures."""
    line = f"{report.stage}: {report.completed} done, {report.skipped_done} already done, "
    if report.other_workers:
        line += f"{report.other_workers} done by other workers, "
    line += f"{report.failed} failed"
    if report.taken_over:
        line += f" ({report.taken_over} taken over from stopped workers)"
    if view is not None and view.pool is not None:
        prompt, completion = view.stage_tokens()
        line += f"; {prompt:,} prompt + {completion:,} completion tokens"
    say(line)
    for failure in report.failures[:10]:
        console.print(f"  [yellow]failure[/] {failure}", highlight=False)

"""The CLI's console, its one progress view for LLM stages, and the per-stage report with the failure budget.

Part of the CLI layer (the only layer that prints).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from neuron_explainer.config import RunConfig
from neuron_explainer.errors import NeuronExplainerError

console = Console(stderr=True)
out = Console(soft_wrap=True)


class StageView:
    """One progress view for every LLM stage of a command: a bar per stage with ETA, and token counts.

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
        self.backends: list[Any] = []
        self._last_line = 0.0
        self._mark = (0, 0)

    def __enter__(self) -> StageView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        global VIEW
        self.progress.__exit__(*exc)
        if VIEW is self:
            VIEW = None

    def stage_tokens(self) -> tuple[int, int]:
        """Tokens since the previous call (a stage's own)."""
        now = self.tokens()
        delta = (now[0] - self._mark[0], now[1] - self._mark[1])
        self._mark = now
        return delta

    def cost(self, prices: dict[str, Any], specs: dict[str, Any]) -> float | None:
        """Total cost from `prices` (spec -> USD per million prompt / completion tokens), None if unpriced."""
        total, priced = 0.0, False
        for spec, backend in specs.items():
            price = prices.get(spec)
            usage = getattr(backend, "usage", None) or {}
            if price is not None:
                priced = True
                total += usage.get("prompt_tokens", 0) * price.prompt / 1e6
                total += usage.get("completion_tokens", 0) * price.completion / 1e6
        return total if priced else None

    def tokens(self) -> tuple[int, int]:
        """Prompt and completion tokens sent through every back end so far."""
        usage = [getattr(b, "usage", None) or {} for b in self.backends]
        return sum(u.get("prompt_tokens", 0) for u in usage), sum(u.get("completion_tokens", 0) for u in usage)

    def __call__(self, stage: str, done: int, total: int) -> None:
        """Report `done` of `total` units of `stage`."""
        import time

        prompt, completion = self.tokens()
        tokens = f"{prompt:,} prompt + {completion:,} completion tokens"
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, tokens=tokens)
        self.progress.update(self.tasks[stage], completed=done, total=total, tokens=tokens)
        now = time.monotonic()
        if not console.is_terminal and (done == total or now - self._last_line >= 30):
            self._last_line = now
            console.print(f"{stage}: {done}/{total} ({tokens})", highlight=False)


VIEW: StageView | None = None
"""The active progress view (set by `stage_view()`); stage functions report to it."""


def _stage_progress(stage: str, done: int, total: int) -> None:
    if VIEW is not None:
        VIEW(stage, done, total)
    else:
        console.print(f"{stage}: {done}/{total}", highlight=False)


def stage_view() -> StageView:
    """Open the progress view the stage functions report to (use as a context manager)."""
    global VIEW
    VIEW = StageView()
    return VIEW


class FailureBudgetExceeded(NeuronExplainerError):
    """A stage failed on more units than `failure_budget` allows; later stages do not run."""


def _report(report: Any, cfg: RunConfig) -> None:
    """Print what a stage did (with its tokens when a view is open) and enforce the failure budget.

    Raises:
        FailureBudgetExceeded: more failed units than `cfg.failure_budget` (a fraction of the stage's
            units below 1, but at least one unit; a count from 1). What succeeded is stored; failures are
            retried on the next run.
    """
    line = f"{report.stage}: {report.completed} done, {report.skipped_done} already done, {report.failed} failed"
    if VIEW is not None:
        prompt, completion = VIEW.stage_tokens()
        line += f"; {prompt:,} prompt + {completion:,} completion tokens"
    console.print(line, highlight=False)
    for failure in report.failures[:10]:
        console.print(f"  [yellow]failure[/] {failure}", highlight=False)
    attempted = report.completed + report.failed
    # a fraction below 1 (one failure is always tolerated, so small pilot runs are not stopped by chance)
    budget = cfg.failure_budget if cfg.failure_budget >= 1 else max(1.0, cfg.failure_budget * attempted)
    if report.failed > budget:
        raise FailureBudgetExceeded(
            f"{report.stage}: {report.failed} of {attempted} units failed, over the failure budget "
            f"({cfg.failure_budget}); the failures are stored in <run>/failures and retried on the next run"
        )

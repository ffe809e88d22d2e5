"""The typer app, its shared options, logging, config building from flags, and error handling.

Part of the CLI layer: argument parsing and printing only. A user error (any NeuronExplainerError)
prints one line and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.logging import RichHandler

from neuron_explainer.cli.progress import StageView, console, print_report, say
from neuron_explainer.config import RunConfig, load_config, parse_set_options
from neuron_explainer.config.sections import Shard
from neuron_explainer.errors import ConfigError, NeuronExplainerError
from neuron_explainer.records.store import RunStore
from neuron_explainer.stages import STAGES, Deps, StageReport, check_failure_budget, stage_module

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Harvest, explain, simulate and score the MLP neurons of transformer language models.",
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value.")]
RunOpt = Annotated[str | None, typer.Option("--run", "--records", help="Run directory (a completed harvest).")]
NeuronsOpt = Annotated[str | None, typer.Option(help="Neurons: 5:0-99, 5:3,7:10-12, layer:5, all, or sample:N.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log debugging detail.")]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard",
        help="This worker's share i/N of the units, by neuron (0 <= i < N), e.g. "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; sets workers.shard.",
    ),
]


def setup_logging(verbose: bool = False) -> None:
    """Our log messages (with --verbose, debugging detail too) through rich on stderr; quiet transformers."""
    logging.basicConfig(
        level=logging.WARNING,
        handlers=[RichHandler(console=console, show_path=False)],
        format="%(message)s",
        force=True,
    )
    logging.getLogger("neuron_explainer").setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a NeuronExplainerError into one `error:` line and exit status 2."""
    try:
        yield
    except NeuronExplainerError as e:
        message = " ".join(str(e).split()) if "\n" not in str(e).strip() else str(e).strip().splitlines()[0]
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def build_config(config: Path | None, sets: list[str] | None, flags: dict[str, Any]) -> RunConfig:
    """The run config: the YAML file, then `--set` values, then the command's own flags (typed; None = unset)."""
    overrides = parse_set_options(sets)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return load_config(config, overrides)


def parse_layers(text: str | None) -> list[int] | None:
    """`0,5,11` or `0-5` (or `all`) as a list of layers.

    Raises:
        ConfigError: anything else.
    """
    if text is None or text.strip().lower() in ("", "all"):
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                a, b = part.split("-")
                layers += range(int(a), int(b) + 1)
            else:
                layers.append(int(part))
    except ValueError:
        raise ConfigError(f"--layers must look like 0,5,11 or 0-5, got {text!r}") from None
    return layers


def parse_shard(text: str) -> Shard:
    """`i/N` as a Shard.

    Raises:
        ConfigError: anything else, or i >= N.
    """
    try:
        return Shard.model_validate(text)
    except ValidationError as e:
        raise ConfigError(f"--shard {text!r}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def parse_range(text: str | None, flag: str) -> tuple[int, int] | None:
    """`START:STOP` as a pair of ints.

    Raises:
        ConfigError: anything else.
    """
    if text is None:
        return None
    try:
        a, b = text.split(":")
        return int(a), int(b)
    except ValueError:
        raise ConfigError(f"{flag} must look like START:STOP, got {text!r}") from None


def run_stage(
    cfg: RunConfig, name: str, *, force: bool = False, after: Callable[[StageReport], None] | None = None
) -> StageReport:
    """Run one stage under the progress view, print its report, enforce the failure budget."""
    with StageView() as view:
        deps = Deps.from_config(cfg, progress=view, notify=say, force=force)
        view.pool = deps.llm

        async def go() -> StageReport:
            try:
                return await stage_module(name).run(RunStore(cfg.out), getattr(cfg, STAGES[name]), deps)
            finally:
                await deps.llm.aclose()

        report = asyncio.run(go())
    print_report(report, view)
    if after is not None:
        after(report)
    check_failure_budget(report, cfg.failure_budget)
    return report

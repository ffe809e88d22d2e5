"""The command-line interface: `neuron-explainer <command>`. Argument parsing and printing only.

`app` is the typer application; importing this package registers every command module on it.
"""

from neuron_explainer.cli import directions_cmds, harvest_cmds, inspect_cmds, run_cmds, stage_cmds, view_cmds
from neuron_explainer.cli.common import app

__all__ = ["app", "directions_cmds", "harvest_cmds", "inspect_cmds", "run_cmds", "stage_cmds", "view_cmds"]


def main() -> None:
    """Entry point for `python -m neuron_explainer`."""
    app()

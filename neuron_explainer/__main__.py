"""`python -m neuron_explainer` runs the CLI."""

from neuron_explainer.cli import app

app()

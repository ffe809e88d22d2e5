"""Exports: a publishable Parquet dataset, and OpenAI's neuron-explainer JSON format (both ways)."""

"""Explainers: write a natural-language hypothesis of what a neuron responds to."""

"""Neuron puzzles: synthetic neurons with known explanations, and the benchmarks that use them."""

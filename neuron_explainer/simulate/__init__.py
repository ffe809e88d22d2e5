"""Simulators: predict a neuron's activation per token from an explanation alone."""

"""Scores of simulations against true activations."""

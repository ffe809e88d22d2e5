"""Subject-model activations: model loading, hook points, corpus excerpts and the harvest reducer."""

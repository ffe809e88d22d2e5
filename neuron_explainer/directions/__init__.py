"""Explainable directions (docs/method.md, "Explainable directions").

- `covariance.py`: the streaming, mergeable covariance of a layer's MLP activations that the harvest keeps
  (`harvest.covariance_layers`), and its files;
- `whitening.py`: Sigma^{-1/2} by eigendecomposition, with a floor for tiny eigenvalues;
- `source.py`: the `directions:FILE` feature source (harvest, explain and ablate directions like neurons);
- `pool.py`: a pool of excerpts whose activations are kept in memory, so that a direction's values over
  it are one matrix product;
- `search.py`, `steps.py`, `results.py`: the coordinate-ascent search for directions that explanations
  describe well, its update step and its tables under `<run>/directions/`.
"""

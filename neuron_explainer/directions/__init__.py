"""Explainable directions (docs/method.md, "Explainable directions").

- `covariance.py`: the streaming, mergeable covariance of a layer's MLP activations that the harvest keeps
  (`harvest.covariance_layers`), its files, and whitening (Sigma^{-1/2}, with a floor for tiny eigenvalues);
- `source.py`: the `directions:FILE` feature source (harvest, explain and ablate directions like neurons);
- `pool.py`: a pool of excerpts whose activations are kept in memory, so that a direction's values over
  it are one matrix product, and the numerical steps over it (the update step, neurons needed);
- `assistants.py`: the explainer and simulator of a search, from the run config;
- `search.py`, `results.py`: the coordinate-ascent search for directions that explanations describe
  well, and its tables under `<run>/directions/`.
"""

"""Which neurons a stage works on: parse a selection spec against what the harvest covered.

Specs, comma-separated parts mixed freely:
- `5:0-99`, `7:3`: explicit layer:neuron ranges;
- `layer:5`: every neuron of layer 5;
- `all`: every harvested neuron;
- `sample:N`: N neurons drawn uniformly (without replacement) from every harvested neuron, reproducible
  from the harvest seed, so a demo or a pilot study is an honest random sample, not a picked one.

A worker's shard (`workers.shard`, `--shard i/N`) keeps the neurons whose stable hash is i mod N
(`shard_of`), so every unit of a neuron, in every stage, falls to the same worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from neuron_explainer.errors import ConfigError

SPEC_HELP = "5:0-99, 5:3,7:10-12, layer:5, all, or sample:N"


def _ints(text: str, spec: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise ConfigError(f"neurons must look like {SPEC_HELP}; got {spec!r}") from None


def resolve_neurons(spec: str, layers: list[int], n_neurons: int, seed: int = 0) -> list[tuple[int, int]]:
    """The (layer, neuron) pairs a spec selects, in spec order, without duplicates.

    Raises:
        ConfigError: a malformed spec, or a layer or neuron the harvest does not cover.
    """
    out: list[tuple[int, int]] = []
    for raw in spec.split(","):
        part = raw.strip()
        head, _, rest = part.partition(":")
        if part == "all":
            out += [(layer, n) for layer in layers for n in range(n_neurons)]
        elif head == "layer":
            lo, hi = _ints(rest, spec)
            out += [(layer, n) for layer in range(lo, hi + 1) for n in range(n_neurons)]
        elif head == "sample":
            count, _ = _ints(rest, spec)
            total = len(layers) * n_neurons
            if not 0 < count <= total:
                raise ConfigError(f"sample:{count} must be between 1 and the {total} harvested neurons")
            picks = np.random.default_rng([seed, 0x5E1EC7]).choice(total, size=count, replace=False)
            out += sorted((layers[int(i) // n_neurons], int(i) % n_neurons) for i in picks)
        else:
            if not rest:
                raise ConfigError(f"neurons must look like {SPEC_HELP}; got {spec!r}")
            layer, _ = _ints(head, spec)
            lo, hi = _ints(rest, spec)
            if lo > hi:
                raise ConfigError(f"empty neuron range {part!r} in {spec!r}")
            out += [(layer, n) for n in range(lo, hi + 1)]
    for layer, n in out:
        if layer not in layers:
            raise ConfigError(f"layer {layer} was not harvested in this run (harvested: {layers})")
        if not 0 <= n < n_neurons:
            raise ConfigError(f"neuron {n} out of range: layers have neurons 0..{n_neurons - 1}")
    return list(dict.fromkeys(out))


def neurons_for_run(spec: str, manifest: dict) -> list[tuple[int, int]]:
    """`resolve_neurons` against a run's harvest manifest."""
    h = manifest["harvest"]
    return resolve_neurons(spec, list(h["layers"]), int(h["n_neurons"]), int(h["config"].get("seed", 0)))


def shard_of(layer: int, neuron: int, count: int) -> int:
    """The shard (0..count-1) of a neuron: a stable hash of (layer, neuron), the same on every machine and run."""
    digest = hashlib.blake2b(f"{int(layer)}:{int(neuron)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def in_shard(pairs: Iterable[tuple[int, int]], index: int, count: int) -> list[bool]:
    """For each (layer, neuron), whether it belongs to shard `index` of `count` (each distinct pair hashed once)."""
    memo: dict[tuple[int, int], bool] = {}
    out = []
    for pair in pairs:
        if pair not in memo:
            memo[pair] = shard_of(pair[0], pair[1], count) == index
        out.append(memo[pair])
    return out

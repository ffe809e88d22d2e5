import pytest

from neuron_explainer.errors import ConfigError
from neuron_explainer.selection import resolve_neurons


def test_ranges_layers_all_and_dedup() -> None:
    assert resolve_neurons("1:0-2,1:1", [0, 1], 4) == [(1, 0), (1, 1), (1, 2)]
    assert resolve_neurons("layer:0", [0, 1], 3) == [(0, 0), (0, 1), (0, 2)]
    assert len(resolve_neurons("all", [0, 1], 3)) == 6


def test_sample_is_reproducible_uniform_and_within_harvest() -> None:
    a = resolve_neurons("sample:5", [2, 4], 100, seed=3)
    assert a == resolve_neurons("sample:5", [2, 4], 100, seed=3)
    assert a != resolve_neurons("sample:5", [2, 4], 100, seed=4)
    assert len(set(a)) == 5 and all(layer in (2, 4) and 0 <= n < 100 for layer, n in a)
    counts = [0, 0]  # over many seeds both layers are drawn about equally
    for seed in range(200):
        for layer, _ in resolve_neurons("sample:1", [2, 4], 100, seed=seed):
            counts[layer == 4] += 1
    assert 70 < counts[0] < 130


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("5", "must look like"),
        ("x:1", "must look like"),
        ("0:3-1", "empty"),
        ("3:0", "not harvested"),
        ("0:9", "out of range"),
        ("sample:0", "between 1"),
        ("sample:99", "between 1"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_neurons(spec, [0, 1], 4)

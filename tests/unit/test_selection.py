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


def test_shards_partition_neurons_stably_and_evenly() -> None:
    from neuron_explainer.selection import in_shard, shard_of

    neurons = [(layer, n) for layer in range(4) for n in range(500)]
    owners = [[i for i in range(3) if in_shard([pair], i, 3)[0]] for pair in neurons]
    assert all(len(o) == 1 for o in owners)  # disjoint and covering
    sizes = [sum(in_shard(neurons, i, 3)) for i in range(3)]
    assert sum(sizes) == 2000 and min(sizes) > 600  # 667 each expected
    # pinned: changing the hash would move neurons between the shards of a batch under way
    assert [shard_of(layer, n, 8) for layer, n in [(0, 0), (0, 1), (5, 123), (47, 6399)]] == [2, 4, 4, 0]
    assert shard_of(3, 9, 1) == 0


@pytest.mark.parametrize(
    ("text", "match"),
    [("2/2", "below the count"), ("a/b", "looks like i/N"), ("3", "looks like i/N"), ("1/0", "greater than")],
)
def test_bad_shards_are_one_line_config_errors(text: str, match: str) -> None:
    from neuron_explainer.config import load_config

    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, [f"workers.shard={text}"])
    assert "workers.shard" in str(info.value) and "\n" not in str(info.value)


def test_shard_from_yaml_set_and_flag_is_the_same() -> None:
    from neuron_explainer.config import Shard, load_config

    assert load_config(None, ["workers.shard=1/4"]).workers.shard == Shard(index=1, count=4)
    assert load_config(None, {"workers.shard": "1/4"}).workers.shard == Shard(index=1, count=4)
    assert str(Shard.model_validate("0/8")) == "0/8"

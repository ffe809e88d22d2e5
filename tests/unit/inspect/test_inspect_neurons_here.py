import numpy as np
import pandas as pd
import pytest
from tiny_families import PROMPT

from neuron_explainer.errors import ConfigError
from neuron_explainer.inspect.family import encode, prompt_activations
from neuron_explainer.inspect.neurons_here import FRAME_COLUMNS, firing_neurons, top_explained_neurons


def explained_frame() -> pd.DataFrame:
    rows = [(0, n, f"L0 N{n}", 0.1 * n) for n in range(0, 40, 3)] + [(2, n, f"L2 N{n}", 0.5) for n in range(5, 48, 4)]
    rows.append((0, 3, "a worse explanation of L0 N3", -1.0))  # a duplicate: the best score wins
    return pd.DataFrame(rows, columns=["layer", "neuron", "explanation", "score"])


def brute_force(acts: dict, explained: pd.DataFrame, top_n: int, max_act: dict | None) -> list[list[tuple]]:
    best = {}
    for row in explained.itertuples():
        key = (row.layer, row.neuron)
        if key not in best or row.score > best[key][1]:
            best[key] = (row.explanation, row.score)
    out = []
    for t in range(next(iter(acts.values())).shape[0]):
        cands = []
        for (layer, neuron), (expl, _score) in best.items():
            value = acts[layer][t, neuron]
            if max_act is not None:
                value = value / max_act[(layer, neuron)]
            cands.append((-value, layer, neuron, expl))
        out.append([(layer, neuron, expl) for _, layer, neuron, expl in sorted(cands)[:top_n]])
    return out


@pytest.mark.parametrize("normalise", [False, True])
def test_top_neurons_match_brute_force(tiny_lms, normalise: bool) -> None:
    model, tokenizer = tiny_lms["llama"]
    explained = explained_frame()
    stats = max_act = None
    if normalise:
        rng = np.random.default_rng(0)
        stats = pd.DataFrame([(layer, n, rng.uniform(0.5, 5)) for layer in (0, 1, 2) for n in range(48)])
        stats.columns = ["layer", "neuron", "max_activation"]
        max_act = {(r.layer, r.neuron): r.max_activation for r in stats.itertuples()}
    got = firing_neurons(model, tokenizer, PROMPT, explained, top_n=4, stats=stats)
    p = encode(model, tokenizer, PROMPT)
    a = prompt_activations(model, p.input_ids, [0, 2])
    want = brute_force({0: a[:, 0], 2: a[:, 1]}, explained, 4, max_act)
    assert tuple(got.frame.columns) == FRAME_COLUMNS and got.normalized == normalise
    for t in range(p.n_tokens):
        rows = got.at(t)
        assert list(zip(rows.layer, rows.neuron, rows.explanation, strict=True)) == want[t]
        assert rows["rank"].tolist() == [1, 2, 3, 4]
        assert (np.diff(rows.value) <= 0).all()
    assert "a worse explanation of L0 N3" not in set(got.frame.explanation)


def test_neurons_without_a_positive_max_are_not_ranked() -> None:
    acts = {1: np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])}
    explained = pd.DataFrame({"layer": [1, 1, 1], "neuron": [0, 1, 2], "explanation": list("abc"), "score": [1, 1, 1]})
    stats = pd.DataFrame({"layer": [1, 1], "neuron": [0, 1], "max_activation": [2.0, 0.0]})
    got = top_explained_neurons(acts, ["x", "y"], explained, top_n=3, stats=stats)
    assert got.frame.neuron.tolist() == [0, 0]
    assert got.frame.normalized.tolist() == [0.5, 1.5]


def test_bad_frames(tiny_lms) -> None:
    model, tokenizer = tiny_lms["gpt2"]
    with pytest.raises(ConfigError, match="lacks column"):
        firing_neurons(model, tokenizer, PROMPT, pd.DataFrame({"layer": [0], "neuron": [1]}))
    bad = pd.DataFrame({"layer": [5], "neuron": [1], "explanation": ["x"], "score": [0.1]})
    with pytest.raises(ConfigError, match="layer"):
        firing_neurons(model, tokenizer, PROMPT, bad)
    bad = pd.DataFrame({"layer": [0], "neuron": [10_000], "explanation": ["x"], "score": [0.1]})
    with pytest.raises(ConfigError, match="out of range"):
        firing_neurons(model, tokenizer, PROMPT, bad)

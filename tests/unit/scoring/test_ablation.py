"""Ablation scoring against a brute-force loop: one neuron, one excerpt at a time, JSD written out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuron_explainer.activations.hookpoints import hook_point_for
from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.scoring.ablation import Ablator, NeuronAblation, jsd, replaced_neurons, score_ablations
from tests.conftest import make_tiny_model

VOCAB = 50


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request: pytest.FixtureRequest):
    # float64, so that the comparison at 1e-6 tests the method, not float32 round-off amplified by the ratio
    return make_tiny_model(request.param, VOCAB).double()


def activations_by_act_module(model, layer: int, input_ids: torch.Tensor) -> torch.Tensor:
    source = ActivationSource(model, hook_point_for(model.config.model_type))
    return source.activations(input_ids, [layer])[layer]


def brute_force_avg_jsd(model, layer: int, ids: torch.Tensor, neuron: int, values: np.ndarray) -> float:
    """One excerpt (T,), the neuron replaced through a hook on a different module than the code under test."""
    blocks = model.transformer.h if model.config.model_type == "gpt2" else model.model.layers
    mlp = blocks[layer].mlp
    if model.config.model_type == "gpt2":  # GPT-2: c_proj(act(c_fc(x))): replace the output of `act`
        target = mlp.act
    else:  # Llama: down_proj(act(gate(x)) * up(x)): replace the output of `up` so the product is `values`
        target = None

    def replace_act(_m, _args, out):
        out = out.clone()
        out[0, :, neuron] = torch.as_tensor(values, dtype=out.dtype)
        return out

    if target is not None:
        handle = target.register_forward_hook(replace_act)
    else:
        gate_act: dict[str, torch.Tensor] = {}

        def keep_gate(_m, _args, out):
            gate_act["g"] = mlp.act_fn(out)

        def replace_up(_m, _args, out):
            out = out.clone()
            out[0, :, neuron] = torch.as_tensor(values, dtype=out.dtype) / gate_act["g"][0, :, neuron]
            return out

        handles = [mlp.gate_proj.register_forward_hook(keep_gate), mlp.up_proj.register_forward_hook(replace_up)]
    try:
        with torch.no_grad():
            ablated = model(input_ids=ids[None]).logits[0].double()
    finally:
        if target is not None:
            handle.remove()
        else:
            for h in handles:
                h.remove()
    with torch.no_grad():
        clean = model(input_ids=ids[None]).logits[0].double()
    total = 0.0
    for t in range(ids.shape[0]):
        p = torch.softmax(ablated[t], -1).numpy()
        q = torch.softmax(clean[t], -1).numpy()
        m = (p + q) / 2
        total += 0.5 * sum(p[i] * math.log(p[i] / m[i]) for i in range(len(p))) + 0.5 * sum(
            q[i] * math.log(q[i] / m[i]) for i in range(len(q))
        )
    return total / ids.shape[0]


def test_jsd_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    p, q = torch.softmax(a, -1).double(), torch.softmax(b, -1).double()
    m = (p + q) / 2
    want = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    got = jsd(torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1))
    assert torch.allclose(got, want, atol=1e-12)
    assert torch.allclose(jsd(p.log(), p.log()), torch.zeros(4, dtype=torch.float64), atol=1e-15)


def test_batched_scores_equal_brute_force(model) -> None:
    layer = 1
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (3, 9), generator=g)
    true = activations_by_act_module(model, layer, ids)
    neurons = [0, 5, 11]
    rng = np.random.default_rng(0)
    sims = {n: rng.normal(size=(3, 9)).astype(np.float32) for n in neurons}
    means = {n: float(true[..., n].mean()) for n in neurons}
    source = ActivationSource(model, hook_point_for(model.config.model_type))
    ablator = Ablator(model, source, batch_rows=4)  # chunks cross neuron boundaries
    items = [NeuronAblation(n, means[n], range(3), sims[n].tolist()) for n in neurons]
    scores = score_ablations(ablator, ids, layer, items)
    for n, score in zip(neurons, scores, strict=True):
        sim_ref = [brute_force_avg_jsd(model, layer, ids[x], n, sims[n][x]) for x in range(3)]
        mean_ref = [brute_force_avg_jsd(model, layer, ids[x], n, np.full(9, means[n])) for x in range(3)]
        np.testing.assert_allclose(score.per_excerpt_simulation, sim_ref, atol=1e-6)
        np.testing.assert_allclose(score.per_excerpt_mean, mean_ref, atol=1e-6)
        assert score.score == pytest.approx(1 - np.mean(sim_ref) / np.mean(mean_ref), abs=1e-6)
    assert ablator.counts.clean_rows == 3 and ablator.counts.ablated_rows == 2 * 3 * len(neurons)


def test_true_activation_scores_one_and_mean_scores_zero(model) -> None:
    layer = 0
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    true = activations_by_act_module(model, layer, ids)
    source = ActivationSource(model, hook_point_for(model.config.model_type))
    n = 3
    mean = float(true[..., n].mean())
    exact, at_mean = score_ablations(
        Ablator(model, source),
        ids,
        layer,
        [
            NeuronAblation(n, mean, [0, 1], true[..., n].tolist()),
            NeuronAblation(n, mean, [0, 1], torch.full((2, 8), mean, dtype=torch.float64).tolist()),
        ],
    )
    assert exact.score == pytest.approx(1.0, abs=1e-6)
    assert at_mean.score == pytest.approx(0.0, abs=1e-9) and at_mean.jsd_mean > 0


def test_hooks_are_removed_after_an_error(model) -> None:
    ids = torch.randint(2, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
    source = ActivationSource(model, hook_point_for(model.config.model_type))
    ablator = Ablator(model, source)
    clean = ablator.clean_logits(ids)
    bad_values = torch.zeros(9)  # longer than the excerpt: the hook itself raises mid-forward
    with pytest.raises(ValueError, match="do not fit"):
        ablator.replaced_jsd(ids, clean, 0, [(0, 1, bad_values)])
    assert all(not source.mlp_out(layer)._forward_pre_hooks for layer in range(source.n_layers))
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.equal(before, after)
    fresh = make_tiny_model(model.config.model_type, VOCAB).double()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, after)


def test_mean_ablation_that_changes_nothing_is_undefined() -> None:
    from neuron_explainer.scoring.ablation import ablation_score

    s = ablation_score([0.0, 0.0], [0.0, 0.0])
    assert s.score is None and "does not change" in s.undefined_reason


def test_a_prefix_position_is_left_alone(model) -> None:
    """With a BOS-like first token, values cover the excerpt only; replacing by the truth changes nothing."""
    layer = 1
    ids = torch.randint(2, VOCAB, (2, 7), generator=torch.Generator().manual_seed(4))
    true = activations_by_act_module(model, layer, ids)
    source = ActivationSource(model, hook_point_for(model.config.model_type))
    (exact,) = score_ablations(
        Ablator(model, source), ids, layer, [NeuronAblation(2, 0.0, [0, 1], true[:, 1:, 2].tolist())]
    )
    assert exact.score == pytest.approx(1.0, abs=1e-9) and exact.jsd_simulation < 1e-12


def test_neurons_with_their_own_excerpts_share_one_clean_forward(model) -> None:
    layer = 1
    ids = torch.randint(2, VOCAB, (4, 6), generator=torch.Generator().manual_seed(5))
    rng = np.random.default_rng(1)
    a = NeuronAblation(1, 0.1, [0, 2], rng.normal(size=(2, 6)).tolist())
    b = NeuronAblation(4, -0.2, [3, 1, 2], rng.normal(size=(3, 6)).tolist())
    source = ActivationSource(model, hook_point_for(model.config.model_type))
    ablator = Ablator(model, source, batch_rows=3)
    together = score_ablations(ablator, ids, layer, [a, b])
    assert ablator.counts.clean_rows == 4 and ablator.counts.ablated_rows == 10
    for item, got in zip([a, b], together, strict=True):
        sim = [
            brute_force_avg_jsd(model, layer, ids[x], item.neuron, np.array(v))
            for x, v in zip(item.excerpts, item.simulations, strict=True)
        ]
        assert got.per_excerpt_simulation == pytest.approx(sim, abs=1e-9)


def test_jsd_is_computed_in_float64_for_a_float32_model() -> None:
    """A float32 model's per-token JSDs equal a float64 computation from the same logits, not float32's."""
    model = make_tiny_model("gpt2", VOCAB)  # float32
    ids = torch.randint(2, VOCAB, (3, 8), generator=torch.Generator().manual_seed(5))
    source = ActivationSource(model, hook_point_for("gpt2"))
    ablator = Ablator(model, source, batch_rows=2)
    clean = ablator.clean_logits(ids)
    acts = source.activations(ids, [1])[1]
    # a small change to one neuron: JSDs near 1e-6, where float32 log-softmax loses most digits
    rows = [(i, 7, (acts[i, :, 7] * 1.01).double()) for i in range(3)]
    got = ablator.replaced_jsd(ids, clean, 1, rows)
    with replaced_neurons(source, 1, torch.tensor([7, 7, 7]), torch.stack([r[2] for r in rows])):
        with torch.no_grad():
            ablated = model(input_ids=ids).logits
    want = jsd(torch.log_softmax(ablated.double(), -1), torch.log_softmax(clean.double(), -1))
    single = jsd(torch.log_softmax(ablated, -1), torch.log_softmax(clean, -1)).double()
    assert got.dtype == torch.float64 and float(want.mean()) < 1e-4
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-15)
    assert (single - want).abs().max() > 1e3 * (got - want).abs().max()  # float32 would be far off

"""Weight and lookup-table baselines against brute force, and their accuracy on a token-driven layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from neuron_explainer.activations.hookpoints import hook_point_for
from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.baselines.predictors import token_lookup, weight_token_predictions
from tests.conftest import make_tiny_model

VOCAB = 40


def source_of(model) -> ActivationSource:
    return ActivationSource(model, hook_point_for(model.config.model_type))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_weight_predictions_equal_the_mlp_computed_by_hand(family: str) -> None:
    model = make_tiny_model(family, VOCAB)
    layer, neurons = 1, [0, 3, 7]
    got = weight_token_predictions(model, source_of(model), layer, neurons, chunk=16)
    assert got.shape == (VOCAB, 3)
    with torch.no_grad():
        e = model.get_input_embeddings().weight
        if family == "gpt2":
            blk = model.transformer.h[layer]
            x = torch.nn.functional.layer_norm(e, (e.shape[1],), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
            pre = x @ blk.mlp.c_fc.weight + blk.mlp.c_fc.bias
            want = blk.mlp.act(pre)[:, neurons]
        else:
            blk = model.model.layers[layer]
            norm = blk.post_attention_layernorm
            x = e * torch.rsqrt(e.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight
            want = (blk.mlp.act_fn(x @ blk.mlp.gate_proj.weight.T) * (x @ blk.mlp.up_proj.weight.T))[:, neurons]
    torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


def test_lookup_equals_a_groupby() -> None:
    model = make_tiny_model("gpt2", VOCAB)
    source = source_of(model)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, VOCAB, (3, 10), generator=g), 1) for _ in range(4)]  # skip a "BOS" column
    table = token_lookup(source, batches, 1, [2, 5])
    rows = []
    for ids, skip in batches:
        acts = source.activations(ids, [1])[1]
        for b in range(ids.shape[0]):
            for t in range(skip, ids.shape[1]):
                rows.append((int(ids[b, t]), float(acts[b, t, 2]), float(acts[b, t, 5])))
    df = pd.DataFrame(rows, columns=["token", "n2", "n5"])
    ref = df.groupby("token").agg(["mean", "count"])
    assert table.token_ids.tolist() == ref.index.tolist()
    np.testing.assert_allclose(table.means[:, 0].numpy(), ref[("n2", "mean")].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(table.means[:, 1].numpy(), ref[("n5", "mean")].to_numpy(), atol=1e-6)
    assert table.counts.tolist() == ref[("n2", "count")].tolist()
    unseen = next(t for t in range(VOCAB) if t not in set(ref.index))
    known = int(ref.index[0])
    assert table.predict([known, unseen], 5) == pytest.approx([ref[("n5", "mean")].iloc[0], df.n5.mean()])


def token_driven_gpt2():
    """A tiny GPT-2 whose layer-0 MLP input is mostly the current token: small position embeddings and
    a damped layer-0 attention output."""
    model = make_tiny_model("gpt2", VOCAB)
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(0.05)
        model.transformer.h[0].attn.c_proj.weight.mul_(0.05)
        model.transformer.h[0].attn.c_proj.bias.zero_()
    return model


def baseline_correlations() -> dict[str, float]:
    model = token_driven_gpt2()
    source = source_of(model)
    neurons = list(range(source.n_neurons))
    g = torch.Generator().manual_seed(1)
    held_out = [(torch.randint(0, VOCAB, (8, 16), generator=g), 0) for _ in range(6)]
    scored = torch.randint(0, VOCAB, (10, 16), generator=g)
    true = source.activations(scored, [0])[0]  # (10, 16, N)
    weights = weight_token_predictions(model, source, 0, neurons)[scored]  # (10, 16, N)
    lookup = token_lookup(source, held_out, 0, neurons)
    out = {}
    for name, pred in (
        ("weights", lambda n: weights[..., n].reshape(-1).numpy()),
        ("lookup", lambda n: np.array([lookup.predict(row.tolist(), n) for row in scored]).reshape(-1)),
    ):
        rs = [np.corrcoef(true[..., n].reshape(-1).numpy(), pred(n))[0, 1] for n in neurons]
        out[name] = float(np.mean(rs))
    return out


def test_baselines_explain_a_token_driven_layer() -> None:
    r = baseline_correlations()
    print("mean r over layer-0 neurons:", r)
    assert r["weights"] > 0.9 and r["lookup"] > 0.9, r

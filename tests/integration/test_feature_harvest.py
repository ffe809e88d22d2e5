"""SAE and transcoder latents as features: the harvest equals a brute-force encode-and-sort, dead latents are
skipped and counted, and ablation of a latent edits the hooked tensor along its decoder row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from neuron_explainer.errors import ConfigError, RunDirError
from neuron_explainer.features.hooks import HookSpec, capture_activations
from neuron_explainer.stages.harvest import HarvestRun
from tests.integration.test_harvest_reference import assert_layer_matches, harvest_cfg
from tests.unit.features.sae_files import (
    brute_encode,
    coder_arrays,
    saelens_v6_cfg,
    write_gemma_npz,
    write_saelens,
    write_sparsify,
)

N_LATENTS = 24
BLOCK0 = {"gpt2": "transformer.h.0", "llama": "model.layers.0"}
D_MODEL = 32
D_MLP = {"gpt2": 128, "llama": 48}
DEAD = 3


def write_coder(kind: str, family: str, root: Path) -> tuple[str, str | None, HookSpec, str, dict, dict]:
    """(path, hook override, input hook, architecture, arrays, brute-force options) of one coder format."""
    arch = {"saelens_topk": "topk", "saelens_gated": "gated", "gemma_npz": "jumprelu", "sparsify": "topk"}.get(
        kind, "standard" if kind != "saelens_jumprelu" else "jumprelu"
    )
    d_out = D_MLP[family] if kind == "transcoder" else D_MODEL
    arrays = coder_arrays(arch, D_MODEL, N_LATENTS, d_out, seed=len(kind))
    if arch == "gated":
        arrays["b_gate"][DEAD] = -1e4
    else:
        arrays["b_enc"][DEAD] = -1e4  # a latent that never fires
    block = HookSpec(BLOCK0[family], "output")
    if kind == "gemma_npz":
        return str(write_gemma_npz(root / "params.npz", arrays)), BLOCK0[family], block, arch, arrays, {}
    if kind == "sparsify":
        cfg = {"d_in": D_MODEL, "k": 6, "num_latents": N_LATENTS}
        folder = write_sparsify(root / ("h.0" if family == "gpt2" else "layers.0"), cfg, arrays)
        return str(folder), None, block, arch, arrays, {"subtract_b_dec": True, "k": 6}
    if kind == "transcoder":
        hook_in, hook_out = "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_post"
        cfg = saelens_v6_cfg(
            "transcoder",
            D_MODEL,
            N_LATENTS,
            hook_in,
            d_out=d_out,
            metadata={"hook_name_out": hook_out},
            apply_b_dec_to_input=False,
        )
        mlp_in = HookSpec(BLOCK0[family] + (".ln_2" if family == "gpt2" else ".post_attention_layernorm"), "output")
        return str(write_saelens(root, cfg, arrays)), None, mlp_in, arch, arrays, {}
    cfg = saelens_v6_cfg(arch, D_MODEL, N_LATENTS, "blocks.0.hook_resid_post", **({"k": 6} if arch == "topk" else {}))
    return str(write_saelens(root, cfg, arrays)), None, block, arch, arrays, {"subtract_b_dec": True, "k": 6}


KINDS = ["saelens_standard", "saelens_topk", "saelens_jumprelu", "saelens_gated", "transcoder", "sparsify", "gemma_npz"]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", KINDS)
def test_sae_harvest_equals_brute_force(kind, family, tiny_model_dirs, corpus_file, tmp_path) -> None:
    path, hook, hook_in, arch, arrays, opts = write_coder(kind, family, tmp_path / "coder")
    cfg = harvest_cfg(tiny_model_dirs[family], corpus_file, features=f"sae:{path}", hook=hook, top_k=4, random_k=3,
                      quantile_k=2, n_excerpts=60, quantile_pilot_excerpts=20)  # fmt: skip
    manifest = HarvestRun(cfg, tmp_path / "run").run()
    h = manifest["harvest"]
    assert h["layers"] == [0] and h["n_neurons"] == N_LATENTS and h["features"]["kind"] == "sae"
    assert h["features"]["content_sha256"]
    excerpts = ds.dataset(tmp_path / "run" / "excerpts").to_table().to_pandas().sort_values("excerpt_id")
    ids = torch.tensor(np.stack(excerpts.token_ids.to_numpy()))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family]).eval()
    if h["prepend_bos"]:
        ids = torch.cat(
            [torch.full((len(ids), 1), AutoTokenizer.from_pretrained(tiny_model_dirs[family]).bos_token_id), ids], 1
        )
    x = capture_activations(model, [hook_in], ids)[hook_in]
    if h["prepend_bos"]:
        x = x[:, 1:]
    acts = brute_encode(arch, x.reshape(-1, D_MODEL).numpy(), arrays, **opts).reshape(x.shape[0], x.shape[1], -1)
    assert (acts[:, :, DEAD] == 0).all() and (acts > 0).any()
    dead = {int(i) for i in np.flatnonzero(acts.max((0, 1)) <= 0)}
    assert h["result"]["dead_features"] == {"0": len(dead)} and DEAD in dead
    records = ds.dataset(tmp_path / "run" / "records").to_table().to_pandas()
    stats = ds.dataset(tmp_path / "run" / "neuron_stats").to_table().to_pandas()
    assert_layer_matches(records, stats, 0, acts, cfg, skip=dead)


def test_a_layer_without_the_coder_and_a_bad_spec_are_refused(tiny_model_dirs, corpus_file, tmp_path) -> None:
    path, *_ = write_coder("saelens_standard", "gpt2", tmp_path / "coder")
    with pytest.raises(ConfigError, match="at layer 0 only"):
        HarvestRun(
            harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, features=f"sae:{path}", layers=[1]), tmp_path / "r"
        )
    with pytest.raises(ConfigError, match="features must be one of"):
        HarvestRun(harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, features="latents:x"), tmp_path / "r2")
    with pytest.raises(ConfigError, match="hook applies to sae"):
        HarvestRun(harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, hook="transformer.h.0"), tmp_path / "r3")


@pytest.mark.parametrize("kind", ["saelens_standard", "transcoder"])
def test_replacing_a_latent_edits_along_its_decoder_row(kind, tiny_model_dirs, tmp_path) -> None:
    from neuron_explainer.activations.hookpoints import hook_point_for
    from neuron_explainer.features.source import make_source

    path, _, hook_in, arch, arrays, opts = write_coder(kind, "gpt2", tmp_path / "coder")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["gpt2"]).eval()
    source = make_source(f"sae:{path}", model, hook_point_for("gpt2"))
    ids = torch.tensor([[5, 9, 12, 3, 7, 20], [8, 2, 30, 31, 4, 6]])
    latents = source.activations(ids, [0])[0]
    feature = int(latents[0].sum(0).argmax())  # a latent that fires on row 0
    values = torch.tensor([[0.0, 2.0, 0.5, 1.0], [3.0, 0.0, 0.0, 1.5]])
    with source.replaced(0, torch.tensor([feature, feature]), values):
        with torch.no_grad():
            got = model(input_ids=ids).logits
    # by hand: add (v - z) * W_dec[feature] at the coder's output hook, on the last 4 positions
    hook_out = source.coder.hook_out
    z = latents[:, -4:, feature]
    delta = torch.zeros(2, 6, arrays["W_dec"].shape[1])
    delta[:, -4:] = (values - z)[..., None] * torch.tensor(arrays["W_dec"][feature])
    module = dict(model.named_modules())[hook_out.module]
    if hook_out.side == "input":
        handle = module.register_forward_pre_hook(lambda m, args: (args[0] + delta, *args[1:]))
    else:
        handle = module.register_forward_hook(
            lambda m, a, out: (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta
        )
    try:
        with torch.no_grad():
            want = model(input_ids=ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        clean = model(input_ids=ids).logits
    assert not torch.allclose(got, clean)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    del hook_in, arch, opts


def test_every_stage_runs_on_sae_latents(tiny_model_dirs, corpus_file, tmp_path) -> None:
    from neuron_explainer.llm.fake import FakeBackend
    from neuron_explainer.records.store import RunStore
    from neuron_explainer.records.tables import read_table
    from tests.conftest import run_stage, stage_config
    from tests.integration.test_pipeline_stages import truth_oracle

    path, *_ = write_coder("saelens_standard", "gpt2", tmp_path / "coder")
    cfg = harvest_cfg(tiny_model_dirs["gpt2"], corpus_file, features=f"sae:{path}", top_k=20, random_k=20,
                      quantile_k=0, n_excerpts=60)  # fmt: skip
    HarvestRun(cfg, tmp_path / "run").run()
    store = RunStore(tmp_path / "run")
    live = read_table_records_neurons(store)[:2]
    sections = {"neurons": ",".join(f"0:{n}" for n in live), "explain": {"explainer": "t:e"},
                "simulate": {"simulator": "t:s", "max_level": 10}, "baselines": {"held_out_excerpts": 20}}  # fmt: skip
    run_cfg = stage_config(store.root, **sections)
    run_stage("explain", run_cfg, {"t:e": FakeBackend(completions=(" tokens of A.", " tokens of B."))})
    run_stage("simulate", run_cfg, {"t:s": FakeBackend(oracle=truth_oracle(store, exact=True))})
    run_stage("score", run_cfg)
    ablated = run_stage("ablate", run_cfg)
    assert ablated.completed == 2 and ablated.failed == 0
    scores = read_table(store, "ablation_scores")
    # the simulation is linear in the latent: calibrated, it is the latent, and the edit must restore the model
    assert len(scores) == 4 and (scores.score > 1 - 1e-3).all(), scores
    with pytest.raises(ConfigError, match="weights baseline reads MLP weights"):
        run_stage("baselines", run_cfg)
    lookup = stage_config(store.root, **{**sections, "baselines": {"kinds": ["lookup"], "held_out_excerpts": 20}})
    assert run_stage("baselines", lookup).completed == 2
    from neuron_explainer.export.dataset import export_dataset
    from neuron_explainer.export.openai_export import export_openai

    counts = export_dataset(store.root, tmp_path / "dataset")  # the dataset export takes features of any kind
    card = (tmp_path / "dataset" / "README.md").read_text()
    assert "Explanations of sparse-autoencoder latents" in card and '"kind": "sae"' in card
    assert counts["ablation_scores"] == len(scores) and counts["explanations"] == len(read_table(store, "explanations"))
    with pytest.raises(RunDirError, match="MLP neurons"):  # OpenAI's format is for MLP neurons
        export_openai(store.root, tmp_path / "openai")


def read_table_records_neurons(store) -> list[int]:
    """Features of layer 0 that have records (live latents), ascending."""
    import pyarrow.parquet as pq

    return sorted(set(pq.read_table(store.records_path(0), columns=["neuron"]).column("neuron").to_pylist()))


def test_the_viewer_names_the_features(tiny_model_dirs, corpus_file, tmp_path) -> None:
    from neuron_explainer.view import build_site

    path, *_ = write_coder("saelens_topk", "llama", tmp_path / "coder")
    cfg = harvest_cfg(tiny_model_dirs["llama"], corpus_file, features=f"sae:{path}", top_k=4, random_k=3)
    HarvestRun(cfg, tmp_path / "run").run()
    report = build_site(tmp_path / "run", tmp_path / "site", pages=[(0, 1)])
    index = report.index.read_text()
    assert "sae features at model.layers.0:output (coder)" in index and report.n_neurons == N_LATENTS


def test_sae_shards_merge_to_the_single_harvest(tiny_model_dirs, corpus_file, tmp_path) -> None:
    from neuron_explainer.records.merge import merge_runs
    from tests.integration.test_harvest_merge import assert_same_harvest

    model_dir, cut, rare = tiny_model_dirs["llama"], 25, 5
    common = {"top_k": 4, "random_k": 3, "quantile_k": 2, "n_excerpts": 60, "quantile_pilot_excerpts": 20}
    arrays = coder_arrays("standard", D_MODEL, N_LATENTS, D_MODEL, seed=11)
    arrays["b_enc"][DEAD] = -1e4
    # latent `rare` fires only above its largest pre-activation in one range: live in one shard, dead in the other
    probe = HarvestRun(harvest_cfg(model_dir, corpus_file, **common), tmp_path / "probe").run()
    excerpts = ds.dataset(tmp_path / "probe" / "excerpts").to_table().to_pandas().sort_values("excerpt_id")
    ids = torch.tensor(np.stack(excerpts.token_ids.to_numpy()))
    if probe["harvest"]["prepend_bos"]:
        ids = torch.cat([torch.full((len(ids), 1), AutoTokenizer.from_pretrained(model_dir).bos_token_id), ids], 1)
    block = HookSpec(BLOCK0["llama"], "output")
    x = capture_activations(AutoModelForCausalLM.from_pretrained(model_dir).eval(), [block], ids)[block]
    x = x[:, 1:] if probe["harvest"]["prepend_bos"] else x
    pre = ((x.double().numpy() - arrays["b_dec"]) @ arrays["W_enc"][:, rare]).max(1)  # per excerpt, before b_enc
    low, high = sorted([pre[:cut].max(), pre[cut:].max()])
    arrays["b_enc"][rare] = -(low + high) / 2
    cfg = saelens_v6_cfg("standard", D_MODEL, N_LATENTS, "blocks.0.hook_resid_post")
    common["features"] = f"sae:{write_saelens(tmp_path / 'coder', cfg, arrays)}"
    single = HarvestRun(harvest_cfg(model_dir, corpus_file, **common), tmp_path / "single").run()
    shards = []
    for a, b in ((0, cut), (cut, 60)):
        HarvestRun(harvest_cfg(model_dir, corpus_file, excerpt_range=(a, b), **common), tmp_path / f"s{a}").run()
        shards.append(tmp_path / f"s{a}")
    live = [ds.dataset(s / "neuron_stats").to_table().to_pandas().max_activation.to_numpy() > 0 for s in shards]
    assert live[0][rare] != live[1][rare]
    merged = merge_runs(shards, tmp_path / "merged")
    assert merged["harvest"]["result"]["dead_features"] == single["harvest"]["result"]["dead_features"] == {"0": 1}
    assert_same_harvest(tmp_path / "single", tmp_path / "merged")

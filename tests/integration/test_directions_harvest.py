"""The harvest's covariance against numpy on all activations (also sharded and resumed), and the
`directions:FILE` source against brute force: raw basis vectors reproduce the neuron harvest, whitened
directions read a^T Sigma^{-1/2} theta, and the ablation edit makes a direction read the value asked for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch
from transformers import AutoModelForCausalLM

from neuron_explainer.config import HarvestConfig, harvest_semantic_hash
from neuron_explainer.directions.covariance import EIGEN_FLOOR, StreamingCovariance, covariance_path
from neuron_explainer.directions.source import write_directions
from neuron_explainer.errors import ConfigError
from neuron_explainer.records.merge import merge_runs
from neuron_explainer.stages import harvest as harvest_stage
from neuron_explainer.stages.harvest import HarvestRun
from tests.integration.test_harvest_reference import assert_layer_matches, harvest_cfg, manual_mlp_activations

FAMILY = "llama"  # prepends BOS: the covariance must leave it out


def all_activations(run: Path, model_dir: Path) -> dict[int, np.ndarray]:
    """Every harvested excerpt's MLP activations {layer: (n, T, d)}, recomputed by hand (BOS dropped)."""
    excerpts = ds.dataset(run / "excerpts").to_table().to_pandas().sort_values("excerpt_id")
    ids = torch.tensor(np.stack(excerpts.token_ids.to_numpy()))
    ids = torch.cat([torch.full((len(ids), 1), 1), ids], 1)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    return {layer: a[:, 1:].astype(np.float64) for layer, a in manual_mlp_activations(FAMILY, model, ids).items()}


def brute_whitener(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return vectors @ np.diag(np.maximum(values, EIGEN_FLOOR * values.max()) ** -0.5) @ vectors.T


def read_cov(run: Path, layer: int) -> StreamingCovariance:
    found, state = StreamingCovariance.read(covariance_path(run, layer))
    assert found == layer
    return state


@pytest.fixture(scope="module")
def cov_run(tiny_model_dirs, corpus_file, tmp_path_factory) -> Path:
    """An MLP harvest of layer 1 that also keeps the covariances of layers 0 (not harvested) and 1."""
    out = tmp_path_factory.mktemp("cov") / "run"
    HarvestRun(harvest_cfg(tiny_model_dirs[FAMILY], corpus_file, layers=[1], covariance_layers=[0, 1]), out).run()
    return out


def test_covariance_equals_numpy_on_all_activations(cov_run, tiny_model_dirs) -> None:
    acts = all_activations(cov_run, tiny_model_dirs[FAMILY])
    for layer in (0, 1):
        flat = acts[layer].reshape(-1, acts[layer].shape[-1])
        state = read_cov(cov_run, layer)
        assert state.n == len(flat)
        np.testing.assert_allclose(state.mean.numpy(), flat.mean(0), rtol=1e-5, atol=1e-6)
        want = np.cov(flat, rowvar=False, bias=True)
        np.testing.assert_allclose(state.covariance(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert sorted(p.name for p in (cov_run / "records").iterdir()) == ["layer-001.parquet"]
    # unset, the option leaves the semantic hash as it was before it existed (value computed on main)
    assert harvest_semantic_hash(HarvestConfig()) == "760955f79fde1c22"
    assert harvest_semantic_hash(HarvestConfig(covariance_layers=[1])) != "760955f79fde1c22"


def test_shards_merge_to_the_unsharded_covariance(cov_run, tiny_model_dirs, corpus_file, tmp_path) -> None:
    model = tiny_model_dirs[FAMILY]
    shards = []
    for a, b in ((0, 20), (20, 50), (50, 90)):
        shards.append(tmp_path / f"s{a}")
        cfg = harvest_cfg(model, corpus_file, layers=[1], covariance_layers=[0, 1], excerpt_range=(a, b))
        HarvestRun(cfg, shards[-1]).run()
    merge_runs(shards[::-1], tmp_path / "merged")
    for layer in (0, 1):
        got, want = read_cov(tmp_path / "merged", layer), read_cov(cov_run, layer)
        assert got.n == want.n
        np.testing.assert_allclose(got.mean.numpy(), want.mean.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.comoment.numpy(), want.comoment.numpy(), rtol=1e-10, atol=1e-9)
    # layer shards saw the same excerpts in the same batches: the file is the unsharded one, byte for byte
    for layer in (0, 1):
        HarvestRun(
            harvest_cfg(model, corpus_file, layers=[layer], covariance_layers=[0, 1]), tmp_path / f"l{layer}"
        ).run()
    merge_runs([tmp_path / "l1", tmp_path / "l0"], tmp_path / "by_layer")
    for layer in (0, 1):
        assert (
            covariance_path(tmp_path / "by_layer", layer).read_bytes() == covariance_path(cov_run, layer).read_bytes()
        )


def test_resumed_harvest_writes_the_same_covariance(
    cov_run, tiny_model_dirs, corpus_file, tmp_path, monkeypatch
) -> None:
    cfg = harvest_cfg(tiny_model_dirs[FAMILY], corpus_file, layers=[1], covariance_layers=[0, 1], checkpoint_seconds=0)
    real, calls = harvest_stage._HarvestLoop.flush_batch, []

    def dies_on_the_fifth(loop) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        real(loop)

    monkeypatch.setattr(harvest_stage._HarvestLoop, "flush_batch", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        HarvestRun(cfg, tmp_path / "run").run()
    monkeypatch.setattr(harvest_stage._HarvestLoop, "flush_batch", real)
    assert (tmp_path / "run" / "harvest_state.pt").exists()
    HarvestRun(cfg, tmp_path / "run").run()
    for layer in (0, 1):
        assert covariance_path(tmp_path / "run", layer).read_bytes() == covariance_path(cov_run, layer).read_bytes()


def test_covariance_needs_mlp_features_and_real_layers(cov_run, tiny_model_dirs, corpus_file, tmp_path) -> None:
    model = tiny_model_dirs[FAMILY]
    with pytest.raises(ConfigError, match="out of range"):
        HarvestRun(harvest_cfg(model, corpus_file, covariance_layers=[5]), tmp_path / "a")
    write_directions(tmp_path / "d.npz", 1, np.eye(48)[:2], whitened=False)
    with pytest.raises(ConfigError, match="needs features: mlp"):
        HarvestRun(
            harvest_cfg(model, corpus_file, features=f"directions:{tmp_path / 'd.npz'}", whiten=False,
                        covariance_layers=[1]),
            tmp_path / "b",
        )  # fmt: skip


MOMENTS = ("mean", "variance", "skewness", "kurtosis", "m2", "m3", "m4")


def frame(run: Path, name: str):
    return ds.dataset(run / name).to_table().to_pandas()


def test_raw_basis_directions_reproduce_the_neuron_harvest(cov_run, tiny_model_dirs, corpus_file, tmp_path) -> None:
    picked = [7, 0, 31]
    write_directions(tmp_path / "basis.npz", 1, np.eye(48)[picked], whitened=False)
    cfg = harvest_cfg(
        tiny_model_dirs[FAMILY], corpus_file, features=f"directions:{tmp_path / 'basis.npz'}", whiten=False
    )
    manifest = HarvestRun(cfg, tmp_path / "run").run()
    assert manifest["harvest"]["layers"] == [1] and manifest["harvest"]["features"]["kind"] == "directions"
    for name, key in (("records", ["kind", "bucket", "rank"]), ("neuron_stats", [])):
        got, want = frame(tmp_path / "run", name), frame(cov_run, name)
        for k, neuron in enumerate(picked):
            a = got[got.neuron == k].sort_values(key or ["neuron"]).reset_index(drop=True).drop(columns="neuron")
            b = want[want.neuron == neuron].sort_values(key or ["neuron"]).reset_index(drop=True).drop(columns="neuron")
            assert len(a) == len(b) > 0
            for col in a.columns:
                if col in MOMENTS:  # float32 partial sums whose order depends on the layer's width
                    np.testing.assert_allclose(a[col], b[col], rtol=1e-6, err_msg=col)
                else:
                    assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), (name, k, col)


def test_whitened_directions_equal_brute_force(cov_run, tiny_model_dirs, corpus_file, tmp_path) -> None:
    theta = np.random.default_rng(5).normal(size=(4, 48))
    write_directions(tmp_path / "dirs" / "white.npz", 1, theta, covariance_run=str(cov_run))
    cfg = harvest_cfg(tiny_model_dirs[FAMILY], corpus_file, features=f"directions:{tmp_path / 'dirs' / 'white.npz'}")
    manifest = HarvestRun(cfg, tmp_path / "run").run()
    assert manifest["harvest"]["features"]["whitened"] is True
    acts = all_activations(cov_run, tiny_model_dirs[FAMILY])[1]
    flat = acts.reshape(-1, 48)
    read = brute_whitener(np.cov(flat, rowvar=False, bias=True)) @ (theta / np.linalg.norm(theta, axis=1)[:, None]).T
    values = (acts @ read).astype(np.float32)  # (n, T, 4)
    assert values.max() > 0
    assert_layer_matches(frame(tmp_path / "run", "records"), frame(tmp_path / "run", "neuron_stats"), 1, values, cfg)


def test_replacing_a_direction_makes_it_read_the_value(cov_run, tiny_model_dirs, tmp_path) -> None:
    from neuron_explainer.activations.hookpoints import hook_point_for
    from neuron_explainer.features.source import make_source

    rng = np.random.default_rng(6)
    theta = rng.normal(size=(2, 48))
    theta[1] -= theta[1] @ theta[0] / (theta[0] @ theta[0]) * theta[0]  # orthogonal to direction 0
    write_directions(tmp_path / "d.npz", 1, theta, covariance_run=str(cov_run))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[FAMILY]).eval()
    source = make_source(f"directions:{tmp_path / 'd.npz'}", model, hook_point_for("llama"), whiten=True)
    w = brute_whitener(read_cov(cov_run, 1).covariance()) @ (theta / np.linalg.norm(theta, axis=1)[:, None]).T
    ids = torch.tensor([[1, 5, 9, 12, 3, 7, 20], [1, 8, 2, 30, 31, 4, 6]])
    seen: list[torch.Tensor] = []
    down = model.model.layers[1].mlp.down_proj
    with torch.no_grad():
        clean = model(input_ids=ids).logits
    values = torch.tensor([[0.0, 2.0, -0.5, 1.0], [3.0, 0.0, 0.0, 1.5]])
    with source.replaced(1, torch.tensor([0, 0]), values):
        handle = down.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
        try:
            with torch.no_grad():
                edited = model(input_ids=ids).logits
        finally:
            handle.remove()
    reads = seen[0].double().numpy() @ w  # (2, 7, 2)
    np.testing.assert_allclose(reads[:, -4:, 0], values.numpy(), atol=1e-4)
    before = source.activations(ids, [1])[1].double().numpy()
    np.testing.assert_allclose(reads[:, :3, 0], before[:, :3, 0], atol=1e-4)  # earlier positions keep theirs
    np.testing.assert_allclose(reads[:, :, 1], before[:, :, 1], atol=1e-4)  # the orthogonal direction too
    assert not torch.allclose(edited, clean)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())

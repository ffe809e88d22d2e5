"""Test helpers: write tiny random sparse coders in each published format, and encode them by brute force.

The brute-force encoders loop over tokens and latents in numpy (float64) straight from the arrays written to
disk, so they share nothing with neuron_explainer.features.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def coder_arrays(arch: str, d_in: int, n: int, d_out: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in SAELens layout: W_enc (d_in, n), W_dec (n, d_out)."""
    rng = np.random.default_rng(seed)
    arrays = {
        "W_enc": rand(rng, d_in, n, scale=d_in**-0.5),
        "W_dec": rand(rng, n, d_out, scale=n**-0.5),
        "b_dec": rand(rng, d_out, scale=0.3),
    }
    if arch == "gated":
        arrays.update(b_gate=rand(rng, n, scale=0.3), r_mag=rand(rng, n, scale=0.3), b_mag=rand(rng, n, scale=0.3))
    else:
        arrays["b_enc"] = rand(rng, n, scale=0.3)
    if arch == "jumprelu":
        # Some negative thresholds: they must behave as a plain ReLU.
        arrays["threshold"] = rng.uniform(-0.2, 0.6, n).astype(np.float32)
    return arrays


def write_saelens(folder: Path, cfg: dict, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / "sae_weights.safetensors"))
    return folder


def saelens_v6_cfg(arch: str, d_in: int, n: int, hook_name: str, **extra) -> dict:
    metadata = {"hook_name": hook_name, "model_name": "tiny", "sae_lens_version": "6.5.0"}
    metadata.update(extra.pop("metadata", {}))
    cfg = {
        "architecture": arch,
        "d_in": d_in,
        "d_sae": n,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
    cfg.update(extra)
    return cfg


def write_sparsify(folder: Path, cfg: dict, arrays: dict[str, np.ndarray]) -> Path:
    """arrays in SAELens layout; written in sparsify's (encoder.weight (n, d_in), W_dec (n, d_in))."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = {
        "encoder.weight": np.ascontiguousarray(arrays["W_enc"].T),
        "encoder.bias": arrays["b_enc"],
        "W_dec": arrays["W_dec"],
        "b_dec": arrays["b_dec"],
    }
    if "W_skip" in arrays:
        tensors["W_skip"] = arrays["W_skip"]
    save_file(tensors, str(folder / "sae.safetensors"))
    return folder


def write_gemma_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: arrays[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")})
    return path


def write_gemma_scope_2(folder: Path, cfg: dict, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    names = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
    save_file(
        {new: np.ascontiguousarray(arrays[old]) for old, new in names.items()}, str(folder / "params.safetensors")
    )
    return folder


def _pre(v: np.ndarray, W: np.ndarray, b: np.ndarray, i: int) -> float:
    return float(sum(float(v[j]) * float(W[j, i]) for j in range(W.shape[0])) + float(b[i]))


def brute_encode(arch: str, x: np.ndarray, a: dict[str, np.ndarray], **opts) -> np.ndarray:
    """Latents of x (T, d_in), token by token and latent by latent.

    opts: subtract_b_dec (bool), k (int), latent_scale (n,), center (bool), norm ("none"|"constant_norm_rescale"|
    "layer_norm").
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    n = a["W_enc"].shape[1]
    out = np.zeros((x.shape[0], n))
    for t in range(x.shape[0]):
        v = x[t].copy()
        if opts.get("center"):
            v = v - v.sum() / len(v)
        if opts.get("norm") == "constant_norm_rescale":
            v = v * np.sqrt(len(v)) / np.sqrt((v * v).sum())
        elif opts.get("norm") == "layer_norm":
            mu = v.sum() / len(v)
            sd = np.sqrt(((v - mu) ** 2).sum() / (len(v) - 1))
            v = (v - mu) / (sd + 1e-5)
        if opts.get("subtract_b_dec"):
            v = v - a["b_dec"]
        if arch == "gated":
            for i in range(n):
                gate = _pre(v, a["W_enc"], a["b_gate"], i)
                mag = _pre(v, a["W_enc"] * np.exp(a["r_mag"].astype(np.float64))[None, :], a["b_mag"], i)
                out[t, i] = max(mag, 0.0) if gate > 0 else 0.0
            continue
        pre = [_pre(v, a["W_enc"], a["b_enc"], i) for i in range(n)]
        if arch == "standard":
            out[t] = [max(p, 0.0) for p in pre]
        elif arch == "jumprelu":
            out[t] = [max(p, 0.0) * (1.0 if p > a["threshold"][i] else 0.0) for i, p in enumerate(pre)]
        elif arch == "topk":
            scale = opts.get("latent_scale")
            scored = [p * (float(scale[i]) if scale is not None else 1.0) for i, p in enumerate(pre)]
            for i in sorted(range(n), key=lambda i: -scored[i])[: opts["k"]]:
                out[t, i] = max(scored[i], 0.0)
    return out

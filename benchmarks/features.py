"""SAE latents vs MLP neurons: harvest time per token and stored bytes per feature, side by side in one run.

Harvests the same excerpts of the packaged Gemma-3-270m twice: layer L's MLP neurons (2,048), and the
latents of a random top-k sparse autoencoder on block L's output (written here in SAELens' layout; a
random coder costs the same to encode as a trained one and is as sparse, k of n latents per token).
Prints seconds per token of each harvest and their ratio, stored bytes per feature (records + stats)
and per live latent, and the dead latents the harvest skipped.

    python benchmarks/features.py [--excerpts 256] [--latents 16384] [--k 64] [--layer 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_random_sae(folder: Path, d_model: int, n: int, k: int, layer: int, seed: int = 0) -> Path:
    """A random top-k SAE in SAELens' layout on block `layer`'s output."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "W_enc": (rng.standard_normal((d_model, n)) / d_model**0.5).astype(np.float32),
        "b_enc": np.zeros(n, np.float32),
        "W_dec": (rng.standard_normal((n, d_model)) / n**0.5).astype(np.float32),
        "b_dec": np.zeros(d_model, np.float32),
    }
    cfg = {"architecture": "topk", "d_in": d_model, "d_sae": n, "k": k, "apply_b_dec_to_input": False,
           "normalize_activations": "none", "metadata": {"hook_name": f"blocks.{layer}.hook_resid_post"}}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(arrays, str(folder / "sae_weights.safetensors"))
    return folder


def harvest(features: str, out: Path, args: argparse.Namespace) -> dict:
    from neuron_explainer.config import HarvestConfig
    from neuron_explainer.stages.harvest import HarvestRun

    cfg = HarvestConfig(model="builtin:gemma3-270m", layers=[args.layer], n_excerpts=args.excerpts,
                        quantile_pilot_excerpts=args.excerpts // 2, batch_size=16, features=features)  # fmt: skip
    run = HarvestRun(cfg, out)  # loads the model outside the timing
    t0 = time.perf_counter()
    manifest = run.run()
    seconds = time.perf_counter() - t0
    files = list((out / "records").glob("*.parquet")) + list((out / "neuron_stats").glob("*.parquet"))
    result = manifest["harvest"]["result"]
    return {
        "seconds_per_token": seconds / result["n_tokens"],
        "bytes": sum(f.stat().st_size for f in files),
        "features": manifest["harvest"]["n_neurons"],
        "dead": sum(result.get("dead_features", {}).values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--excerpts", type=int, default=256)
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--layer", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sae = write_random_sae(root / "sae", 640, args.latents, args.k, args.layer)
        mlp = harvest("mlp", root / "mlp", args)
        latents = harvest(f"sae:{sae}", root / "latents", args)
    live = latents["features"] - latents["dead"]
    print(f"Gemma-3-270m layer {args.layer}, {args.excerpts} excerpts of 64 tokens")
    print(f"{'':24}{'MLP neurons':>14}{'SAE latents':>14}{'ratio':>8}")
    print(f"{'features':24}{mlp['features']:>14,}{latents['features']:>14,}")
    print(f"{'dead (no records)':24}{mlp['dead']:>14,}{latents['dead']:>14,}")
    ratio = latents["seconds_per_token"] / mlp["seconds_per_token"]
    print(f"{'ms per token':24}{1e3 * mlp['seconds_per_token']:>14.2f}{1e3 * latents['seconds_per_token']:>14.2f}"
          f"{ratio:>8.2f}")  # fmt: skip
    per_mlp, per_latent = mlp["bytes"] / mlp["features"], latents["bytes"] / latents["features"]
    print(f"{'bytes per feature':24}{per_mlp:>14,.0f}{per_latent:>14,.0f}{per_latent / per_mlp:>8.2f}")
    print(f"{'bytes per live latent':24}{'':>14}{latents['bytes'] / max(live, 1):>14,.0f}")


if __name__ == "__main__":
    main()

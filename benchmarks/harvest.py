"""Harvest benchmark: speed vs a plain forward, peak memory at two corpus sizes, bytes on disk per neuron.

Everything is measured in this one run, side by side:
    python benchmarks/harvest.py                       # offline default (Gemma-3-270m, all 18 layers)
    python benchmarks/harvest.py --model <dir> --layers 0,5 --n-speed 64 --sizes 100,400
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # measure this checkout's package, not an installed copy


def excerpt_batches(subject, corpus: str, n: int, batch_size: int, excerpt_len: int, bos: bool) -> list[torch.Tensor]:
    from neuron_explainer.activations.corpus import iter_excerpts, open_corpus
    from neuron_explainer.config import CorpusConfig

    docs = open_corpus(CorpusConfig(source=corpus, excerpts_per_doc=8)).documents()
    tok = subject.tokenizer
    stream = iter_excerpts(
        docs,
        lambda t: tok(t, add_special_tokens=False)["input_ids"],
        excerpt_len=excerpt_len,
        seed=0,
        excerpts_per_doc=8,
        limit=n,
    )
    ids = torch.tensor([e.token_ids for e in stream])
    if bos:
        ids = torch.cat([torch.full((len(ids), 1), tok.bos_token_id), ids], 1)
    return list(ids.split(batch_size))


def speed(args: argparse.Namespace) -> dict:
    from neuron_explainer.activations.harvest import Harvester, HarvestShape
    from neuron_explainer.activations.models import load_subject_model
    from neuron_explainer.activations.sources import ActivationSource
    from neuron_explainer.activations.subject import wants_bos as _wants_bos

    subject = load_subject_model(args.model, device=args.device)
    source = ActivationSource(subject.model, subject.hook_point)
    layers = list(range(source.n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    bos = _wants_bos(subject.tokenizer, None)
    batches = excerpt_batches(subject, args.corpus, args.n_speed, args.batch_size, 64, bos)
    shape = HarvestShape(source.n_neurons, 64, 20, 20, 5, pilot=args.n_speed // 2, seed=0)
    harvester = Harvester(layers, shape, args.device, next(subject.model.parameters()).dtype)
    times = {"full_forward": 0.0, "truncated_forward": 0.0, "harvest": 0.0}
    cpu = dict.fromkeys(times, 0.0)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def timed(key: str, fn, *fn_args) -> None:
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn(*fn_args)
        sync()
        times[key] += time.perf_counter() - t0
        cpu[key] += time.process_time() - c0

    def harvest_step(x: torch.Tensor, ids: torch.Tensor) -> None:
        acts = source.activations(x, layers)
        if bos:
            acts = {k: v[:, 1:] for k, v in acts.items()}
        harvester.update(ids, acts)

    next_id = 0
    with torch.no_grad():
        subject.model(input_ids=batches[0].to(args.device), use_cache=False)  # warm-up
        for batch in batches:  # interleaved, so drift in machine load hits all three alike
            x = batch.to(args.device)
            ids = torch.arange(next_id, next_id + len(batch))
            next_id += len(batch)
            timed("full_forward", lambda x: subject.model(input_ids=x, use_cache=False), x)
            timed("truncated_forward", source.activations, x, layers)
            timed("harvest", harvest_step, x, ids)
    tokens = sum(b.numel() for b in batches)
    return {
        "layers": len(layers),
        "n_neurons": source.n_neurons,
        "excerpts": next_id,
        "tokens": tokens,
        **times,
        "cpu": cpu,
    }


def harvest_subprocess(args: argparse.Namespace, out: Path, n: int, quantile_k: int) -> dict:
    code = (
        "import json, resource, time, sys\n"
        "from neuron_explainer.stages.harvest import HarvestRun\n"
        "from neuron_explainer.config import HarvestConfig\n"
        "cfg = HarvestConfig.model_validate(json.loads(sys.argv[1]))\n"
        "import psutil\n"
        "run = HarvestRun(cfg, sys.argv[2], force=True)\n"
        "loaded_rss = psutil.Process().memory_info().rss / 2**20\n"
        "t0 = time.perf_counter(); m = run.run()\n"
        "print(json.dumps({'seconds': time.perf_counter() - t0, 'loaded_rss_mb': loaded_rss,"
        " 'end_rss_mb': psutil.Process().memory_info().rss / 2**20,"
        " 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    cfg = {
        "model": args.model,
        "corpus": {"source": args.corpus, "excerpts_per_doc": 8},
        "n_excerpts": n,
        "quantile_k": quantile_k,
        "device": args.device,
        "batch_size": args.batch_size,
    }
    if args.layers != "all":
        cfg["layers"] = [int(x) for x in args.layers.split(",")]
    res = subprocess.run(
        [sys.executable, "-c", code, json.dumps(cfg), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
    )
    result = json.loads(res.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())["harvest"]
    neurons = len(manifest["layers"]) * manifest["n_neurons"]
    records = sum(p.stat().st_size for p in (out / "records").glob("*.parquet"))
    stats = sum(p.stat().st_size for p in (out / "neuron_stats").glob("*.parquet"))
    excerpts = sum(p.stat().st_size for p in (out / "excerpts").glob("*.parquet"))
    return {
        **result,
        "n_excerpts": n,
        "quantile_k": quantile_k,
        "neurons": neurons,
        "records_bytes_per_neuron": records / neurons,
        "stats_bytes_per_neuron": stats / neurons,
        "excerpt_bytes": excerpts,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:gemma3-270m")
    p.add_argument("--corpus", default="builtin:english-prose")
    p.add_argument("--layers", default="all")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-speed", type=int, default=256, help="excerpts for the speed comparison")
    p.add_argument("--sizes", default="200,800", help="two corpus sizes (excerpts) for the memory comparison")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--speed-only", action="store_true", help="skip the memory and disk measurements")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, model {args.model}")

    s = speed(args)
    print(f"\n== speed: {s['excerpts']} excerpts x 64 tokens, {s['layers']} layers x {s['n_neurons']} neurons")
    for key in ("full_forward", "truncated_forward", "harvest"):
        print(f"{key:>18}: {s[key]:8.2f} s  ({s['tokens'] / s[key]:,.0f} tokens/s)")
    print(f"harvest / full forward       = {s['harvest'] / s['full_forward']:.2f}   (goal <= 1.3)")
    print(
        f"harvest / truncated forward  = {s['harvest'] / s['truncated_forward']:.2f}   (goal <= 1.15; "
        "truncated: stops after the deepest harvested layer, no unembedding)"
    )
    c = s["cpu"]
    print(
        f"same ratios in process CPU time: {c['harvest'] / c['full_forward']:.2f} and "
        f"{c['harvest'] / c['truncated_forward']:.2f}   (robust to a shared machine with --threads 1; "
        "with more threads it counts their spin-waits too)"
    )
    if args.speed_only:
        return

    small, large = (int(x) for x in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        runs = [harvest_subprocess(args, Path(tmp) / f"n{n}", n, 5) for n in (small, large)]
        bare = harvest_subprocess(args, Path(tmp) / "bare", small, 0)
    print("\n== peak memory (whole harvest process, model included)")
    for r in runs:
        print(
            f"{r['n_excerpts']:>6} excerpts: peak RSS {r['peak_rss_mb']:6.0f} MB; RSS after model load "
            f"{r['loaded_rss_mb']:6.0f} MB, after harvest {r['end_rss_mb']:6.0f} MB; harvest {r['seconds']:.1f} s"
        )
    print(f"peak RSS ratio {large}/{small} excerpts = {runs[1]['peak_rss_mb'] / runs[0]['peak_rss_mb']:.3f}")
    print("\n== bytes on disk per neuron (float16 records, zstd)")
    print(f"20 top + 20 random records of 64 tokens: {bare['records_bytes_per_neuron']:,.0f} B   (goal <= 6 KB)")
    print(f"+ 5 quantile buckets x 5 records:        {runs[0]['records_bytes_per_neuron']:,.0f} B")
    print(f"statistics row:                          {runs[0]['stats_bytes_per_neuron']:,.0f} B")
    print(f"excerpts table ({small} excerpts, stored once): {runs[0]['excerpt_bytes']:,} B")


if __name__ == "__main__":
    main()

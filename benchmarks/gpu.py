"""GPU throughput against the FLOP floor: harvest, batched simulation, explanation generation.

    python benchmarks/gpu.py                  # one CUDA GPU; sized for a few minutes on an H100/H200
    python benchmarks/gpu.py --tiny           # small shapes on any device, the CPU included (a smoke run)
    python benchmarks/gpu.py --peak-tflops 989 --peak-tbps 4.8   # peaks for a GPU the table does not know

Workloads (random weights built from configs, random token ids: nothing is downloaded or written):
  harvest     GPT-2 XL shape (48 layers, d_model 1600, 6400 MLP neurons), bf16; every layer harvested
              (top 20, random 20, 5 x 5 quantile samples, moments) over a synthetic corpus. Also the bare
              truncated forward, so the reducers' share shows.
  simulation  Llama-3-8B shape, through the package's batched slot scorer (the in-process simulation path):
              one ~700-token few-shot prefix computed once, its KV cache viewed across batches of excerpt
              suffixes packed by a token budget, the output head applied only at the slot positions and
              only to the label rows.
  generation  Llama-3-8B shape, batched greedy generation (prefill + decode), as an explainer would run.

Columns: achieved TFLOP/s; ÷ peak (the model FLOP utilisation); time ÷ FLOP floor (the time the counted
FLOPs take at the dense bf16 peak: 1 / utilisation); time ÷ roofline floor (per forward call the larger
of FLOPs / peak and bytes read / memory bandwidth, which is what bounds decoding). FLOPs are counted from
the module shapes: 2 x matrix-multiply weights per token, plus 4 x attention width x attended positions
per token and layer (causal: the masked half is not counted). Peaks come from the table below by device
name, else are measured (a large matmul, a large copy) and marked so.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # measure this checkout's package

# dense (no sparsity) bf16 tensor-core TFLOP/s and memory TB/s, from the vendors' data sheets
PEAKS = {
    "H200": (989.0, 4.8),
    "GH200": (989.0, 4.0),
    "H100 NVL": (835.0, 3.9),
    "H100 PCIe": (756.0, 2.0),
    "H100": (989.0, 3.35),
    "A100-SXM4-80GB": (312.0, 2.04),
    "A100": (312.0, 1.56),
    "L40S": (362.0, 0.864),
    "L4": (121.0, 0.3),
    "A10G": (70.0, 0.6),
    "RTX 4090": (165.0, 1.0),
}


@dataclass
class Shapes:
    """Model configs and workload sizes."""

    gpt2: dict = field(default_factory=lambda: {"n_layer": 48, "n_embd": 1600, "n_head": 25, "n_positions": 1024})
    llama: dict = field(
        default_factory=lambda: {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 128256,
            "max_position_embeddings": 4096,
        }
    )
    vocab_gpt2: int = 50257
    harvest_excerpts: int = 8192
    harvest_len: int = 64
    harvest_batch: int = 256
    sim_prefix: int = 700
    sim_suffix: int = 256
    sim_slots: int = 64
    sim_batch: int = 64
    sim_batches: int = 8
    gen_batch: int = 32
    gen_prompt: int = 1024
    gen_new: int = 64


TINY = Shapes(
    gpt2={"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0},
    llama={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
    },
    vocab_gpt2=512,
    harvest_excerpts=96,
    harvest_len=16,
    harvest_batch=16,
    sim_prefix=40,
    sim_suffix=32,
    sim_slots=8,
    sim_batch=4,
    sim_batches=2,
    gen_batch=2,
    gen_prompt=24,
    gen_new=6,
)


@dataclass
class Row:
    """One measured workload."""

    name: str
    what: str
    seconds: float
    tokens: int
    flops: float
    roofline_s: float
    """Sum over forward calls of max(FLOPs / peak, bytes read / bandwidth)."""


class Device:
    """The device, its synchronisation and its peaks."""

    def __init__(self, name: str, dtype: torch.dtype, peak_tflops: float | None, peak_tbps: float | None) -> None:
        self.device = torch.device(name)
        self.dtype = dtype
        self.is_cuda = self.device.type == "cuda"
        label = torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"
        known = next((v for k, v in PEAKS.items() if k in label), None) if self.is_cuda else None
        source = "data sheet" if known else "measured"
        flops = peak_tflops or (known[0] if known else self.measure_matmul() / 1e12)
        tbps = peak_tbps or (known[1] if known else self.measure_copy() / 1e12)
        if peak_tflops or peak_tbps:
            source = "given"
        self.peak, self.bandwidth = flops * 1e12, tbps * 1e12
        self.describe = f"{label}, {dtype}: peak {flops:.3g} TFLOP/s and {tbps:.3g} TB/s ({source})"

    def sync(self) -> None:
        """Wait for queued device work (timing boundaries only)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def timed(self, fn, *args) -> tuple[float, object]:  # noqa: ANN001
        """Seconds one call takes, device work included, and its result."""
        self.sync()
        t0 = time.perf_counter()
        out = fn(*args)
        self.sync()
        return time.perf_counter() - t0, out

    def measure_matmul(self) -> float:
        """FLOP/s of a large square matmul in the benchmark dtype."""
        n = 4096 if self.is_cuda else 512
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        a @ a
        seconds, _ = self.timed(lambda: [a @ a for _ in range(10)])
        return 10 * 2 * n**3 / seconds

    def measure_copy(self) -> float:
        """Bytes/s read and written by a large copy."""
        x = torch.empty(2**28 if self.is_cuda else 2**22, dtype=torch.uint8, device=self.device)
        y = x.clone()
        seconds, _ = self.timed(lambda: [y.copy_(x) for _ in range(10)])
        return 10 * 2 * x.numel() / seconds


def build(cls: type, config: object, dev: Device) -> nn.Module:
    """A model with random weights, initialised directly on the device in the benchmark dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dev.dtype)
    try:
        with torch.device(dev.device):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def matmul_weights(module: nn.Module) -> int:
    """Weights of the matrix multiplies inside `module` (nn.Linear and GPT-2's Conv1D)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")


def attention_flops(n_layers: int, width: int, positions: int) -> float:
    """QK^T and AV: 2 multiplies of `width` per attended position, per token and layer."""
    return 4.0 * n_layers * width * positions


def causal_positions(start: int, length: int) -> int:
    """Positions attended by `length` tokens that follow `start` cached ones (each sees itself)."""
    return length * start + length * (length + 1) // 2


def bench_harvest(s: Shapes, dev: Device) -> list[Row]:
    """Bare truncated forward and harvest (forward + every reducer) of all layers, one sync per loop."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from neuron_explainer.activations.harvest import Harvester, HarvestShape
    from neuron_explainer.activations.hookpoints import hook_point_for
    from neuron_explainer.activations.sources import ActivationSource

    model = build(GPT2LMHeadModel, GPT2Config(vocab_size=s.vocab_gpt2, **s.gpt2), dev)
    source = ActivationSource(model, hook_point_for("gpt2"))
    layers = list(range(source.n_layers))
    tokens = torch.randint(
        0, s.vocab_gpt2, (s.harvest_excerpts, s.harvest_len), generator=torch.Generator().manual_seed(0)
    )
    batches = [b.to(dev.device) for b in tokens.split(s.harvest_batch)]
    shape = HarvestShape(source.n_neurons, s.harvest_len, 20, 20, 5, pilot=s.harvest_excerpts // 4, seed=0)

    def forward_only() -> None:
        for x in batches:
            source.activations(x, layers)

    def harvest(n_batches: int) -> None:
        h, start = Harvester(layers, shape, dev.device, dev.dtype), 0
        for x in batches[:n_batches]:
            h.update(torch.arange(start, start + len(x)), source.activations(x, layers))
            start += len(x)
        h.check_finite()  # the one wait for the device, as at a checkpoint

    with torch.no_grad():
        harvest(2)  # warm-up: kernels, allocator, autotuning
        forward_s, _ = dev.timed(forward_only)
        harvest_s, _ = dev.timed(harvest, len(batches))
    weights = matmul_weights(source.blocks) - source.mlp_out(layers[-1]).weight.numel()  # stops before it
    n_tok = tokens.numel()
    flops = 2.0 * weights * n_tok + attention_flops(
        len(layers), s.gpt2["n_embd"], s.harvest_excerpts * causal_positions(0, s.harvest_len)
    )
    roof = sum(max(flops / len(batches) / dev.peak, 2 * weights / dev.bandwidth) for _ in batches)
    what = f"{len(layers)} layers x {source.n_neurons} neurons, {s.harvest_excerpts} x {s.harvest_len} tokens"
    return [
        Row("truncated forward", what, forward_s, n_tok, flops, roof),
        Row("harvest", what + f", batch {s.harvest_batch}", harvest_s, n_tok, flops, roof),
    ]


def bench_simulation(model: nn.Module, s: Shapes, dev: Device) -> Row:
    """The batched slot scorer over prompts of a shared prefix and random excerpt suffixes."""
    from types import SimpleNamespace

    from neuron_explainer.llm.hf_batch import Encoded, PrefixStore, SlotScorer

    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, cfg.vocab_size, (s.sim_prefix,), generator=gen).tolist()
    n_exc = s.sim_batches * s.sim_batch
    suffixes = torch.randint(0, cfg.vocab_size, (n_exc, s.sim_suffix), generator=gen).tolist()
    step = s.sim_suffix // s.sim_slots
    reads = [s.sim_prefix + k * step + step - 1 for k in range(s.sim_slots)]
    labels = tuple(range(11))  # stand-ins for the tokens "0".."10"
    encoded = [Encoded(i, prefix + suffix, reads, ("t",) * s.sim_slots, labels) for i, suffix in enumerate(suffixes)]
    # random ids need no tokenizer: the scorer reads only its padding id
    scorer = SlotScorer(
        model, SimpleNamespace(pad_token_id=0, eos_token_id=0), PrefixStore(), batch_tokens=s.sim_batch * s.sim_suffix
    )

    def run(rows: list[Encoded]) -> list:
        scorer.store.clear()  # the prefix runs in every timed call
        results: list = [None] * len(encoded)
        scorer.score_encoded(rows, results)
        return results

    run(encoded[: s.sim_batch])
    warm_batches = scorer.batches
    seconds, results = dev.timed(run, encoded)
    assert all(r is not None for r in results)
    layers, width = cfg.num_hidden_layers, cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
    weights = matmul_weights(model.model.layers)
    flops = (
        2.0 * weights * (s.sim_prefix + n_exc * s.sim_suffix)
        + attention_flops(layers, width, causal_positions(0, s.sim_prefix))
        + n_exc * attention_flops(layers, width, causal_positions(s.sim_prefix, s.sim_suffix))
        + 2.0 * len(labels) * cfg.hidden_size * n_exc * s.sim_slots
    )
    kv_bytes = 2 * layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    calls = s.sim_batches + 1
    read = 2 * weights * calls + kv_bytes * n_exc * (s.sim_prefix + s.sim_suffix)
    roof = max(flops / dev.peak, read / dev.bandwidth)
    what = (
        f"{n_exc} excerpts: {s.sim_prefix}-token shared prefix + {s.sim_suffix}, {s.sim_slots} slots each, "
        f"{scorer.batches - warm_batches} suffix batches (SlotScorer)"
    )
    return Row("batched simulation", what, seconds, n_exc * s.sim_suffix, flops, roof)


def bench_generation(model: nn.Module, s: Shapes, dev: Device) -> Row:
    """Batched greedy generation of exactly `gen_new` tokens per prompt."""
    cfg = model.config
    prompts = torch.randint(0, cfg.vocab_size, (s.gen_batch, s.gen_prompt), generator=torch.Generator().manual_seed(2))
    prompts = prompts.to(dev.device)
    mask = torch.ones_like(prompts)

    def run(n: int) -> torch.Tensor:
        # min_new_tokens = max_new_tokens: a random model's end-of-sequence token cannot cut a row short
        return model.generate(
            input_ids=prompts, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )

    with torch.no_grad():
        run(2)
        seconds, out = dev.timed(run, s.gen_new)
    assert out.shape[1] == s.gen_prompt + s.gen_new, out.shape
    layers, width = cfg.num_hidden_layers, cfg.hidden_size
    weights, head = matmul_weights(model.model.layers), cfg.vocab_size * cfg.hidden_size
    b, p, n = s.gen_batch, s.gen_prompt, s.gen_new
    prefill = 2.0 * weights * b * p + b * attention_flops(layers, width, causal_positions(0, p)) + 2.0 * head * b
    decode = b * (n - 1) * (2.0 * (weights + head)) + b * attention_flops(layers, width, causal_positions(p, n - 1))
    kv_token = 2 * layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    roof = max(prefill / dev.peak, 2 * (weights + head) / dev.bandwidth)
    for step in range(1, n):
        step_read = 2 * (weights + head) + b * kv_token * (p + step)
        roof += max(b * 2.0 * (weights + head) / dev.peak, step_read / dev.bandwidth)
    what = f"{b} prompts x {p} tokens, {n} new tokens each (prefill + decode)"
    return Row("explanation generation", what, seconds, b * n, prefill + decode, roof)


def print_table(rows: list[Row], dev: Device) -> None:
    """One table, one row per workload."""
    print(dev.describe)
    head = (
        f"{'workload':<28} {'seconds':>8} {'tokens/s':>10} {'TFLOP/s':>8} {'÷ peak':>7} "
        f"{'÷ FLOP floor':>12} {'÷ roofline':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        achieved = r.flops / r.seconds
        print(
            f"{r.name:<28} {r.seconds:8.3f} {r.tokens / r.seconds:10,.0f} {achieved / 1e12:8.3g} "
            f"{achieved / dev.peak:7.1%} {r.seconds / (r.flops / dev.peak):12.2f} {r.seconds / r.roofline_s:10.2f}"
        )
    fwd = next(r for r in rows if r.name == "truncated forward")
    hv = next(r for r in rows if r.name == "harvest")
    print(f"harvest / truncated forward = {hv.seconds / fwd.seconds:.2f}")
    for r in rows:
        print(f"  {r.name}: {r.what}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the three workloads, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small shapes on any device (a smoke run; CPU if no CUDA)")
    p.add_argument("--device", default=None, help="torch device (default: cuda, or cpu with --tiny and no CUDA)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak TFLOP/s of an unknown GPU")
    p.add_argument("--peak-tbps", type=float, default=None, help="memory bandwidth TB/s of an unknown GPU")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = args.device or ("cuda" if cuda or not args.tiny else "cpu")
    if torch.device(device).type == "cuda" and not cuda:
        print("benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); --tiny runs on the CPU")
        return 1
    from transformers import LlamaConfig, LlamaForCausalLM

    shapes = TINY if args.tiny else Shapes()
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and args.tiny:
        torch.set_num_threads(1)  # a smoke run: one thread is quick and steady on a shared machine
    dtype = torch.float32 if on_cpu else torch.bfloat16
    dev = Device(device, dtype, args.peak_tflops, args.peak_tbps)
    torch.manual_seed(0)
    rows = bench_harvest(shapes, dev)
    if dev.is_cuda:
        torch.cuda.empty_cache()
    llama = build(LlamaForCausalLM, LlamaConfig(**shapes.llama), dev)
    rows.append(bench_simulation(llama, shapes, dev))
    rows.append(bench_generation(llama, shapes, dev))
    print_table(rows, dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())

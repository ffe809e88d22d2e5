"""benchmarks/gpu.py: `--tiny` runs every workload on the CPU and prints one table; the full run without
CUDA stops with one clear line."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROWS = ("truncated forward", "harvest", "batched simulation", "explanation generation")


def run_script(*args: str) -> subprocess.CompletedProcess:
    # An empty CUDA_VISIBLE_DEVICES hides any GPU, so both tests take the same path on every machine.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_tiny_run_prints_one_table_of_finite_ratios() -> None:
    res = run_script("--tiny")
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert "(measured)" in lines[0]  # the CPU has no data-sheet peak: it is measured
    for name in ROWS:
        row = [line for line in lines if line.startswith(f"{name} ") and line[len(name) :].split()[0][0].isdigit()]
        assert len(row) == 1, (name, res.stdout)
        numbers = [float(x.rstrip("%").replace(",", "")) for x in row[0][len(name) :].split()]
        assert len(numbers) == 6 and all(math.isfinite(x) and x > 0 for x in numbers), row
    ratio = next(line for line in lines if line.startswith("harvest / truncated forward = "))
    assert float(ratio.rsplit(" ", 1)[1]) > 0


def test_full_run_without_cuda_exits_with_one_line() -> None:
    res = run_script()
    assert res.returncode == 1
    out = res.stdout.strip().splitlines()
    assert len(out) == 1 and "no CUDA device" in out[0], res.stdout + res.stderr

"""Benchmarks at toy settings, so that they keep running as the package changes (their numbers are
measured by hand at full size: docs/benchmarks.md). benchmarks/gpu.py has its own test."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLUMNS = 5  # managed, run_units, 2 replicas, + cache, typed create


def test_http_benchmark_prints_its_three_tables() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "http_load.py"), "--latency", "0.05", "--rounds", "1",
         "--repeats", "1"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split() for line in res.stdout.splitlines() if line.split()[:1] in (["1"], ["8"], ["64"])]
    assert len(rows) == 3 * 3  # ratio, peak and CPU tables, each for 1, 8 and 64 in flight
    for row in rows:
        values = [float(x) for x in row[2:]]
        assert len(values) == COLUMNS and all(math.isfinite(v) and v > 0 for v in values), row
    ratios, peaks = rows[:3], rows[3:6]
    assert all(float(v) <= 1.2 for row in ratios for v in row[2:])  # never faster than the latency allows
    for n, row in zip((1, 8, 64), peaks, strict=True):  # never more outstanding than llm.max_in_flight
        assert all(1 <= int(v) <= n for v in row[2:]), row


@pytest.mark.skipif(shutil.which("/usr/bin/chromium") is None, reason="no Chromium at /usr/bin/chromium")
def test_view_benchmark_builds_and_browses_a_small_synthetic_run(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "view.py"), "--layers", "2", "--neurons", "60", "--pages", "4",
         "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout[res.stdout.index("{") :])
    assert report["page_errors"] == 0 and report["neuron_page_spans"] > 0
    assert report["search_status"].endswith("of 120 neurons")

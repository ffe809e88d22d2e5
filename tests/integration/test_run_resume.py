"""`run` over every neuron of two layers, SIGKILLed mid-way, resumes and ends equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table


def write_config(tmp: Path, model: Path, corpus: Path, out: Path) -> Path:
    cfg = {
        "out": str(out),
        "show_neurons": 0,
        "harvest": {
            "model": str(model),
            "corpus": {"source": str(corpus)},
            "n_excerpts": 90,
            "excerpt_len": 16,
            "top_k": 20,
            "random_k": 20,
            "quantile_k": 0,
            "quantile_pilot_excerpts": 30,
            "batch_size": 8,
            "record_dtype": "float32",
            "seed": 3,
        },  # fmt: skip
        "neurons": "all",  # both layers of the tiny GPT-2: 2 x 128 neurons
        "explain": {"explainer": "fake"},
        "simulate": {"simulator": "fake:oracle", "max_level": 10},
        "llm": {"max_in_flight": 1},
    }
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "neuron_explainer", "run", "--config", str(config)]


def tables(out: Path) -> dict[str, pd.DataFrame]:
    store = RunStore(out)
    keys = {"explanations": ["explanation_id"], "simulations": ["explanation_id", "split", "record_kind", "excerpt_id"],
            "scores": ["explanation_id", "scorer"]}  # fmt: skip
    out_tables = {}
    for name in ("explanations", "simulations", "scores"):
        df = read_table(store, name)
        out_tables[name] = df.sort_values(keys[name]).reset_index(drop=True)
    return out_tables


def test_sigkilled_run_resumes_to_the_same_dataset(tiny_model_dirs, corpus_file, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    full = write_config(tmp_path, tiny_model_dirs["gpt2"], corpus_file, tmp_path / "full")
    done = subprocess.run(run_cmd(full), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = write_config(tmp_path, tiny_model_dirs["gpt2"], corpus_file, tmp_path / "killed")
    proc = subprocess.Popen(run_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sims = tmp_path / "killed" / "simulations"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if sims.is_dir() and len(list(sims.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_table(RunStore(tmp_path / "killed"), "simulations")
    assert 0 < partial.explanation_id.nunique() < 256  # killed mid-stage
    again = subprocess.run(run_cmd(killed), env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]

    a, b = tables(tmp_path / "full"), tables(tmp_path / "killed")
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)
    expl = b["explanations"]
    assert len(expl) == 256 and expl.explanation_id.is_unique
    assert set(zip(expl.layer, expl.neuron, strict=True)) == {(layer, n) for layer in (0, 1) for n in range(128)}
    assert len(b["scores"]) == 2 * 256

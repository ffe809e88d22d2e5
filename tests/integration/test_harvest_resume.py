"""A harvest killed with SIGKILL resumes on rerun and ends identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import torch

from tests.conftest import write_corpus


def harvest_cmd(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "neuron_explainer",
        "harvest",
        "--model",
        str(model),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--n-excerpts",
        "1500",
        "--excerpt-len",
        "16",
        "--batch-size",
        "4",
        "--top-k",
        "5",
        "--random-k",
        "5",
        "--quantile-k",
        "2",
        "--set",
        "harvest.checkpoint_seconds=0",
        "--set",
        "harvest.quantile_pilot_excerpts=300",
    ]


def table(run: Path, name: str):
    return ds.dataset(run / name).to_table().to_pandas()


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("big"), n_docs=600, seed=7)


def test_sigkill_then_resume_equals_uninterrupted(
    tiny_model_dirs: dict[str, Path], big_corpus: Path, tmp_path: Path
) -> None:
    model = tiny_model_dirs["llama"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(Path.cwd())}
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(harvest_cmd(model, big_corpus, ref), check=True, env=env, capture_output=True, timeout=600)

    proc = subprocess.Popen(
        harvest_cmd(model, big_corpus, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state = killed / "harvest_state.pt"
    deadline = time.monotonic() + 300
    progress = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            try:
                progress = int(torch.load(state, weights_only=False)["next_id"])
            except Exception:  # caught mid-rename: try again
                progress = 0
            if progress >= 400:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "harvest finished before it could be killed; make the corpus bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 400 <= progress < 1500
    assert '"harvest": "in_progress"' in (killed / "manifest.json").read_text()

    resumed = subprocess.run(
        harvest_cmd(model, big_corpus, killed), env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at excerpt" in resumed.stderr
    assert not state.exists()
    for name, key in (
        ("records", ["layer", "neuron", "kind", "bucket", "rank"]),
        ("neuron_stats", ["layer", "neuron"]),
        ("excerpts", ["excerpt_id"]),
    ):
        a = table(ref, name).sort_values(key).reset_index(drop=True)
        b = table(killed, name).sort_values(key).reset_index(drop=True)
        assert len(a) == len(b) > 0
        for col in a.columns:
            assert a[col].astype(str).tolist() == b[col].astype(str).tolist(), (name, col)
    excerpt_ids = table(killed, "excerpts")["excerpt_id"]
    assert excerpt_ids.is_unique and sorted(excerpt_ids) == list(range(1500))

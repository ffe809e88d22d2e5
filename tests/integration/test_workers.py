"""Many workers, one result: worker processes sharing a run directory, shards, and merging separate directories.

Every test compares the final tables with a single worker's run of the same config (in-process, fakes from
the same specs) and checks that no row key is repeated. The worker processes are real `python -m
neuron_explainer` processes on a tiny random GPT-2 with the `fake` / `fake:oracle` back ends; SIGSTOP
freezes a worker at a known point (holding claims) so that the interleavings tested are not left to chance.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from neuron_explainer.cli import app
from neuron_explainer.config import load_config
from neuron_explainer.records.schema import table_key
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import STAGE_TABLES, read_table
from neuron_explainer.selection import shard_of
from neuron_explainer.stages.harvest import HarvestRun

FEW = "0:0-3,1:0-3"
"""The neurons the workers work on."""
NEURONS = {(layer, n) for layer in (0, 1) for n in range(4)}
REPORT = re.compile(r"(\w+): (\d+) done, (\d+) already done, (?:(\d+) done by other workers, )?(\d+) failed")


def write_config(
    run: Path, model: Path, corpus: Path, *, neurons: str, every_stage: bool = False, **workers: Any
) -> Path:
    cfg: dict[str, Any] = {
        "out": str(run),
        "show_neurons": 0,
        "harvest": {"model": str(model), "corpus": {"source": str(corpus)}, "n_excerpts": 60, "excerpt_len": 16,
                    "top_k": 20, "random_k": 20, "quantile_k": 0, "quantile_pilot_excerpts": 20, "batch_size": 8,
                    "record_dtype": "float32", "seed": 3},
        "neurons": neurons,
        "explain": {"explainer": "fake"},
        "simulate": {"simulator": "fake:oracle", "max_level": 10},
        "llm": {"max_in_flight": 1, "cache": False},
        "workers": workers,
    }  # fmt: skip
    if every_stage:
        cfg |= {"revise": {"enabled": True, "arms": ["revised", "reexplain"]},
                "baselines": {"enabled": True, "held_out_excerpts": 20}, "ablate": {"enabled": True}}  # fmt: skip
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def setup(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A harvested run to copy, and a single worker's run of every stage over FEW (the reference)."""
    root = tmp_path_factory.mktemp("workers")
    model = tiny_model_dirs["gpt2"]
    harvest = root / "harvest"
    HarvestRun(load_config(write_config(harvest, model, corpus_file, neurons=FEW)).harvest, harvest).run()
    every = copy_run(harvest, root / "every")
    reports = run_in_process(write_config(every, model, corpus_file, neurons=FEW, every_stage=True))
    return {"harvest": harvest, "model": model, "corpus": corpus_file, "every": every,
            "every_done": {r.stage: r.completed for r in reports}}  # fmt: skip


def copy_run(harvest: Path, to: Path) -> Path:
    shutil.copytree(harvest, to)
    return to


def run_in_process(config: Path) -> list:
    from neuron_explainer.pipeline import run_pipeline

    return run_pipeline(load_config(config)).reports


def start(config: Path, *command: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "neuron_explainer", *command, "--config", str(config)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> dict[str, tuple[int, int, int]]:
    """Wait for a worker; (done, already done, done by other workers) per stage from its report lines."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, (out + err)[-3000:]
    found = {m[1]: (int(m[2]), int(m[3]), int(m[4] or 0)) for m in REPORT.finditer(err)}
    assert found, err[-2000:]
    return found


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def claim_files(run: Path, stage: str) -> list[Path]:
    folder = run / "claims" / stage
    return [p for p in folder.glob("*.*") if p.suffix[1:].isdigit()] if folder.is_dir() else []


def unit_of(claim: Path) -> tuple[int, int]:
    layer, neuron, _ = claim.name.split("-")
    return int(layer), int(neuron)


def explained(run: Path) -> set[tuple[int, int]]:
    expl = read_table(RunStore(run), "explanations")
    return set(zip(expl.layer.tolist(), expl.neuron.tolist(), strict=True))


def canonical(run: Path) -> dict[str, pd.DataFrame]:
    """Every stage table sorted by its key, after checking that no key is repeated (each unit written once)."""
    out = {}
    for name in STAGE_TABLES:
        df = read_table(RunStore(run), name)
        key = table_key(name)
        assert not df.duplicated(key).any(), f"{name}: rows written twice in {run}"
        out[name] = df.sort_values(key, na_position="first").reset_index(drop=True)
    return out


def assert_same_tables(run: Path, reference: Path) -> None:
    got, want = canonical(run), canonical(reference)
    for name in STAGE_TABLES:
        pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=1e-5, obj=name)


def test_two_workers_on_one_run_directory_do_each_unit_once(setup: dict, tmp_path: Path) -> None:
    run = copy_run(setup["harvest"], tmp_path / "run")
    config = write_config(run, setup["model"], setup["corpus"], neurons=FEW, every_stage=True, claim_expiry_seconds=60)
    a = start(config, "run")
    wait_for(lambda: claim_files(run, "explain"), "the first worker's first claim")
    os.kill(a.pid, signal.SIGSTOP)  # frozen holding its claims
    held = {unit_of(p) for p in claim_files(run, "explain")}
    unwritten = held - explained(run)
    b = start(config, "run")
    # b explains every neuron but a's, then waits for those while a is frozen
    wait_for(lambda: NEURONS - held <= explained(run), "the second worker to explain every free neuron")
    os.kill(a.pid, signal.SIGCONT)  # both go on through every stage
    done_a, done_b = finish(a), finish(b)
    assert unwritten and done_b["explain"][2] >= len(unwritten)  # b found a's units done by a, after waiting
    for stage, completed in setup["every_done"].items():
        if stage != "harvest":
            assert done_a[stage][0] + done_b[stage][0] == completed, stage  # every unit once, by one of them
    assert_same_tables(run, setup["every"])
    for stage in setup["every_done"]:
        assert not claim_files(run, stage), stage  # every claim released
        assert not any((run / "claims" / stage / "workers").glob("*")), stage  # every worker deregistered


def test_killed_workers_claims_are_taken_over_after_expiry(setup: dict, tmp_path: Path) -> None:
    run = copy_run(setup["harvest"], tmp_path / "run")
    config = write_config(run, setup["model"], setup["corpus"], neurons=FEW, claim_expiry_seconds=2)
    a = start(config, "explain")
    wait_for(lambda: claim_files(run, "explain"), "the first worker's first claim")
    os.kill(a.pid, signal.SIGSTOP)
    orphans = {unit_of(p) for p in claim_files(run, "explain")} - explained(run)
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    assert orphans
    b = subprocess.run([sys.executable, "-m", "neuron_explainer", "explain", "--config", str(config)],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert b.returncode == 0, b.stderr[-3000:]
    assert f"({len(orphans)} taken over from stopped workers)" in b.stderr, b.stderr[-2000:]
    got = canonical(run)["explanations"]
    want = canonical(setup["every"])["explanations"]
    want = want[(want["round"] == 1) & (want.explainer == "fake:fake-model")].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    left = claim_files(run, "explain")
    assert {unit_of(p) for p in left} <= explained(run)  # only claims of units a wrote but had not released
    assert not list((run / "claims" / "explain" / "workers").iterdir())  # the dead worker is deregistered


def test_shards_partition_the_run_and_merge_into_it(setup: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    shards = []
    for i in (0, 1):
        run = copy_run(setup["harvest"], tmp_path / f"shard{i}")
        config = write_config(run, setup["model"], setup["corpus"], neurons=FEW, every_stage=True)
        result = runner.invoke(app, ["run", "--config", str(config), "--shard", f"{i}/2"])
        assert result.exit_code == 0, result.output
        for name in STAGE_TABLES:
            df = read_table(RunStore(run), name)
            assert all(shard_of(a, n, 2) == i for a, n in zip(df.layer, df.neuron, strict=True)), name
        shards.append(run)
    ours = [explained(s) for s in shards]
    assert ours[0] and ours[1] and not ours[0] & ours[1] and ours[0] | ours[1] == explained(setup["every"])

    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", "--out", str(merged), *map(str, shards)])
    assert result.exit_code == 0 and "stage tables of 2 run(s)" in result.output, result.output
    assert_same_tables(merged, setup["every"])
    again = tmp_path / "again"  # overlapping inputs: repeated rows collapse
    result = runner.invoke(app, ["merge", "--out", str(again), str(setup["every"]), *map(str, shards)])
    assert result.exit_code == 0, result.output
    assert_same_tables(again, setup["every"])

    from neuron_explainer.records.tables import write_part

    row = read_table(RunStore(shards[0]), "explanations").iloc[0].to_dict()
    write_part(RunStore(shards[1]), "explanations", [{**row, "explanation": "something else"}])
    result = runner.invoke(app, ["merge", "--out", str(tmp_path / "refused"), *map(str, shards)])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "explanations: two different rows" in message and "explanation differ" in message
    assert not (tmp_path / "refused" / "manifest.json").exists()


def test_a_shard_needs_a_complete_harvest(setup: dict, tmp_path: Path) -> None:
    config = write_config(tmp_path / "empty", setup["model"], setup["corpus"], neurons=FEW)
    result = CliRunner().invoke(app, ["run", "--config", str(config), "--shard", "0/2"])
    assert result.exit_code == 2 and "harvest it first" in " ".join(result.output.split()), result.output


def test_every_stage_takes_over_a_stopped_workers_unit(setup: dict, tmp_path: Path) -> None:
    from neuron_explainer.stages.claims import UnitClaims

    run = copy_run(setup["harvest"], tmp_path / "run")
    config = write_config(run, setup["model"], setup["corpus"], neurons=FEW, every_stage=True, claim_expiry_seconds=1)
    ref = canonical(setup["every"])
    expls = ref["explanations"]
    expl = expls[(expls["round"] == 1) & (expls.explainer == "fake:fake-model")].iloc[0]  # an LLM explanation
    llm = (int(expl.layer), int(expl.neuron), expl.explanation_id, "fake:fake-model")
    keys = {"explain": (*llm[:2], expl.explainer, expl.prompt_version), "simulate": llm, "revise": llm, "score": llm,
            "ablate": llm, "baselines": (0, 3, "baseline:weights")}  # fmt: skip
    stopped = []
    for stage, key in keys.items():  # a worker that claimed one unit of each stage, then stopped heartbeating
        claims = UnitClaims(run, stage, expiry_seconds=1).__enter__()
        claims._stop.set()
        assert claims.acquire(key).value == "acquired"
        stopped.append(claims)
    reports = {r.stage: r for r in run_in_process(config)}
    assert {stage: reports[stage].taken_over for stage in keys} == dict.fromkeys(keys, 1)
    assert_same_tables(run, setup["every"])

"""The harvest split by the CLI: `harvest --shard i/N` + `merge`, and `torchrun` with gloo on CPU.

Both must equal the single-process harvest (tests/integration/test_harvest_merge.assert_same_harvest).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from neuron_explainer.cli import app
from neuron_explainer.config import RunConfig
from neuron_explainer.config.sections import Shard
from neuron_explainer.errors import ConfigError, RunDirError
from neuron_explainer.stages.harvest import HarvestRun
from neuron_explainer.stages.harvest_shards import merged_already, shard_range
from tests.integration.test_harvest_merge import assert_same_harvest
from tests.integration.test_harvest_reference import harvest_cfg


@pytest.fixture(scope="module")
def setup(tiny_model_dirs: dict[str, Path], corpus_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """A config file for the tiny Llama and the single-process harvest it gives."""
    root = tmp_path_factory.mktemp("shards")
    cfg = harvest_cfg(tiny_model_dirs["llama"], corpus_file)
    HarvestRun(cfg, root / "single").run()
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump({"out": str(root / "unused"), "harvest": cfg.model_dump(mode="json")}))
    return config, root / "single"


def test_shard_ranges_tile_the_excerpts() -> None:
    for start, stop, n in ((0, 90, 4), (10, 17, 7), (0, 5, 1), (3, 103, 64)):
        parts = [shard_range(start, stop, Shard(index=i, count=n)) for i in range(n)]
        assert parts[0][0] == start and parts[-1][1] == stop
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        sizes = [b - a for a, b in parts]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    with pytest.raises(ConfigError, match="at most one shard per excerpt"):
        shard_range(0, 3, Shard(index=0, count=4))


def test_cli_shards_then_merge_equal_one_harvest(setup, tmp_path: Path) -> None:
    config, single = setup
    out = tmp_path / "run"
    for i in range(3):
        result = CliRunner().invoke(app, ["harvest", "--config", str(config), "--out", str(out), "--shard", f"{i}/3"])
        assert result.exit_code == 0, result.output
        assert "neuron-explainer merge --out" in result.output
    ranges = [json.loads((out / "shards" / f"{i}-of-3" / "manifest.json").read_text()) for i in range(3)]
    assert [m["harvest"]["result"]["excerpt_range"] for m in ranges] == [[0, 30], [30, 60], [60, 90]]
    shards = sorted(str(p) for p in (out / "shards").iterdir())
    result = CliRunner().invoke(app, ["merge", "--out", str(out), *shards])
    assert result.exit_code == 0, result.output
    assert_same_harvest(single, out)


def test_bad_shard_flags_are_one_line_errors(setup, tmp_path: Path) -> None:
    config, _ = setup
    for bad, message in (("3/3", "below the count"), ("x", "looks like i/N"), ("0/200", "at most one shard")):
        result = CliRunner().invoke(app, ["harvest", "--config", str(config), "--out", str(tmp_path), "--shard", bad])
        assert result.exit_code != 0 and message in result.output, result.output
        assert "Traceback" not in result.output


def test_a_merged_harvest_is_not_redone_and_another_is_refused(setup) -> None:
    config, single = setup
    data = yaml.safe_load(config.read_text())
    cfg = RunConfig.model_validate({**data, "out": str(single)})
    assert merged_already(cfg)
    other = cfg.model_copy(update={"harvest": cfg.harvest.model_copy(update={"seed": 99})})
    with pytest.raises(RunDirError, match="another harvest"):
        merged_already(other)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_ranks_on_cpu_equal_one_harvest(setup, tmp_path: Path) -> None:
    config, single = setup
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "neuron_explainer", "harvest", "--config", str(config), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "merged 2 ranks' shards" in done.stdout + done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(p).name for p in manifest["harvest"]["merged_from"]] == ["0-of-2", "1-of-2"]
    assert_same_harvest(single, out)
    again = subprocess.run(command[:6] + [str(free_port())] + command[7:], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "already holds this harvest" in again.stdout + again.stderr

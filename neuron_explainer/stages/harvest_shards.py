"""The harvest in shards of the excerpt stream, by any scheduler or by torchrun.

`harvest --shard i/N` harvests the i-th of N contiguous excerpt ranges into `<out>/shards/i-of-N`; when
all N are done, `merge --out <out> <out>/shards/*` joins them, exactly (records/merge.py). Under
`torchrun --nproc-per-node N`, every rank harvests its range on its own device (`cuda:LOCAL_RANK` when
the config says cuda), the ranks exchange their outcomes through torch.distributed (nccl on GPUs, gloo
on CPUs), and rank 0 merges into `<out>`. Each shard resumes like any harvest, so a rerun after a crash
redoes only what was lost; a rerun after a complete merge does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from neuron_explainer.config.sections import RunConfig, Shard, harvest_semantic_hash
from neuron_explainer.errors import ConfigError, NeuronExplainerError, RunDirError
from neuron_explainer.records.store import RunStore

DISTRIBUTED_TIMEOUT = timedelta(hours=72)
"""How long a rank that finished waits for the slowest one before torch.distributed gives up."""


def shard_range(start: int, stop: int, shard: Shard) -> tuple[int, int]:
    """The shard's contiguous part of excerpts [start, stop); the N parts tile it, sizes within one.

    Raises:
        ConfigError: more shards than excerpts.
    """
    n = stop - start
    if shard.count > n:
        raise ConfigError(f"{shard.count} harvest shards for {n} excerpts: use at most one shard per excerpt")
    return start + shard.index * n // shard.count, start + (shard.index + 1) * n // shard.count


def shard_dir(out: str | Path, shard: Shard) -> Path:
    """Where shard i/N of the harvest into `out` writes: `<out>/shards/i-of-N`."""
    return Path(out) / "shards" / f"{shard.index}-of-{shard.count}"


def shard_config(cfg: RunConfig, shard: Shard, device: str | None = None) -> RunConfig:
    """The run config that harvests `shard` of `cfg`'s excerpts into its own directory (on `device`)."""
    start, stop = cfg.harvest.excerpt_range or (0, cfg.harvest.n_excerpts)
    harvest = cfg.harvest.model_copy(
        update={"excerpt_range": shard_range(start, stop, shard), "device": device or cfg.harvest.device}
    )
    return cfg.model_copy(update={"out": str(shard_dir(cfg.out, shard)), "harvest": harvest, "neurons": None})


def merged_already(cfg: RunConfig) -> bool:
    """Whether `cfg.out` holds this harvest, complete (a rerun after the merge has nothing to do).

    Raises:
        RunDirError: `cfg.out` holds another harvest.
    """
    manifest = RunStore(cfg.out).read_manifest()
    if manifest is None or "harvest" not in manifest:
        return False
    if manifest["harvest"].get("semantic_hash") != harvest_semantic_hash(cfg.harvest):
        raise RunDirError(f"{cfg.out} already holds another harvest; choose a new --out or delete it")
    return manifest.get("status", {}).get("harvest") == "complete"


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int


def torchrun_rank() -> Rank | None:
    """The torchrun rank of this process (None when not launched by torchrun with more than one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def harvest_distributed(
    cfg: RunConfig, rank: Rank, harvest_one: Callable[[RunConfig], object], notify: Callable[[str], None]
) -> dict | None:
    """Harvest this rank's shard with `harvest_one`; rank 0 merges all of them into `cfg.out`.

    Returns the merged manifest on rank 0 (None on the other ranks, or when the merge was done before).

    Raises:
        RunDirError: a rank failed (each rank names the ones that did), or the merge failed.
    """
    import torch
    import torch.distributed as dist

    from neuron_explainer.records.merge import merge_runs

    if merged_already(cfg):
        notify(f"rank {rank.rank}: {cfg.out} already holds this harvest, complete")
        return None
    cuda = cfg.harvest.device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=DISTRIBUTED_TIMEOUT)
    try:
        shard = Shard(index=rank.rank, count=rank.world_size)
        device = f"cuda:{rank.local_rank}" if cuda else None
        outcome = "ok"
        try:
            harvest_one(shard_config(cfg, shard, device))
        except NeuronExplainerError as e:
            outcome = str(e)
        except Exception as e:  # noqa: BLE001 - the other ranks must hear of it, or they wait for this one
            outcome = f"{type(e).__name__}: {e}"
        outcomes: list[str | None] = [None] * rank.world_size
        dist.all_gather_object(outcomes, outcome)
    finally:
        dist.destroy_process_group()
    failed = {i: o for i, o in enumerate(outcomes) if o != "ok"}
    if failed:
        raise RunDirError(
            "harvest ranks failed, nothing merged (rerun to resume): "
            + "; ".join(f"rank {i}: {message}" for i, message in failed.items())
        )
    if rank.rank != 0:
        return None
    shards = [shard_dir(cfg.out, Shard(index=i, count=rank.world_size)) for i in range(rank.world_size)]
    notify(f"merging {len(shards)} shards into {cfg.out}")
    return merge_runs(shards, cfg.out)

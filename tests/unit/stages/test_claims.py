"""Unit claims: exclusive, taken over when stale, never repeating a unit another worker finished or failed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.stages.claims import ClaimState, UnitClaims, claim_name
from neuron_explainer.stages.runtime import StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_units

KEY = (3, 17, "fake:fake-model", "v1")


def worker(root: Path, expiry: float = 60.0) -> UnitClaims:
    """A registered worker whose heartbeat thread is stopped (tests age it by hand)."""
    claims = UnitClaims(root, "explain", expiry_seconds=expiry).__enter__()
    claims._stop.set()
    assert claims._thread is not None
    claims._thread.join()
    return claims


def age(claims: UnitClaims, seconds: float) -> None:
    """Make a worker look as if it had not heartbeated for `seconds`."""
    mtime = claims.worker_file.stat().st_mtime - seconds
    os.utime(claims.worker_file, (mtime, mtime))


def done_row(unit: int) -> UnitResult:
    """A unit's result: one row of a table with a simple schema."""
    row = {"stage": "t", "layer": 0, "neuron": unit, "explanation_id": None, "kind": "ok", "message": "", "raw": None}
    return UnitResult({"failures": [row]})


def files(claims: UnitClaims) -> set[str]:
    return {p.name for p in claims.dir.iterdir() if p.is_file()}


def test_one_holder_at_a_time_and_a_finished_unit_is_not_repeated(tmp_path: Path) -> None:
    a, b = worker(tmp_path), worker(tmp_path)
    assert a.acquire(KEY) is ClaimState.ACQUIRED
    assert b.acquire(KEY) is ClaimState.HELD and a.acquire(KEY) is ClaimState.HELD
    a.release(KEY)
    name = claim_name(KEY)
    assert files(a) == {f"{name}.done"}  # the claim is gone, the done marker stays for workers that started before
    assert b.acquire(KEY) is ClaimState.DONE
    assert b.acquire((3, 17, "fake:fake-model", "v2")) is ClaimState.ACQUIRED  # another prompt: another unit


def test_done_marker_is_checked_after_claiming(tmp_path: Path) -> None:
    # b looked for a marker, found none, then a finished and released before b linked its claim
    a, b = worker(tmp_path), worker(tmp_path)
    a.acquire(KEY)
    name = claim_name(KEY)
    real_link = b._link

    def link_after_release(path: Path) -> bool:
        a.release(KEY)
        return real_link(path)

    b._link = link_after_release  # type: ignore[method-assign]
    assert b.acquire(KEY) is ClaimState.DONE
    assert not (b.dir / f"{name}.0").exists() and name not in b.held


def test_stale_claim_is_taken_over_once_and_the_old_owner_learns_it(tmp_path: Path) -> None:
    a, b, c = worker(tmp_path, expiry=30), worker(tmp_path, expiry=30), worker(tmp_path, expiry=30)
    assert a.acquire(KEY) is ClaimState.ACQUIRED
    age(a, 20)
    assert b.acquire(KEY) is ClaimState.HELD  # not yet expired
    age(a, 20)
    assert b.acquire(KEY) is ClaimState.ACQUIRED and b.taken_over == 1
    assert c.acquire(KEY) is ClaimState.HELD  # b's claim is fresh: one taker wins
    name = claim_name(KEY)
    assert {f"{name}.0", f"{name}.1"} <= files(b)
    assert a.owned([KEY]) == [False] and b.owned([KEY]) == [True]
    a.__exit__(None, None, None)  # the stalled owner gives up: it must leave the chain of claims alone
    assert {f"{name}.0", f"{name}.1"} <= files(b)
    b.release(KEY)
    assert files(b) == {f"{name}.done"}


def test_heartbeat_keeps_claims_fresh(tmp_path: Path) -> None:
    a, b = worker(tmp_path, expiry=30), worker(tmp_path, expiry=30)
    a.acquire(KEY)
    age(a, 100)
    a.heartbeat()  # the claim is a link to the worker file: one touch refreshes every claim
    assert b.acquire(KEY) is ClaimState.HELD


def test_failure_stops_workers_started_before_it_only(tmp_path: Path) -> None:
    a, b = worker(tmp_path), worker(tmp_path)
    a.acquire(KEY)
    a.release(KEY, failed=True)
    assert b.acquire(KEY) is ClaimState.FAILED
    marker = a.dir / f"{claim_name(KEY)}.failed"
    old = marker.stat().st_mtime - 1
    os.utime(marker, (old, old))
    later = worker(tmp_path)  # a later run retries failures
    assert later.acquire(KEY) is ClaimState.ACQUIRED
    later.release(KEY)
    assert not marker.exists()


def test_done_marker_older_than_a_start_is_ignored(tmp_path: Path) -> None:
    a = worker(tmp_path)
    a.acquire(KEY)
    a.release(KEY)
    marker = a.dir / f"{claim_name(KEY)}.done"
    old = marker.stat().st_mtime - 60
    os.utime(marker, (old, old))
    # the rows were written before this worker read the table: a unit it still plans was removed on purpose
    assert worker(tmp_path).acquire(KEY) is ClaimState.ACQUIRED


def test_exit_releases_unfinished_claims_and_cleans_up(tmp_path: Path) -> None:
    a, dead = worker(tmp_path, expiry=30), worker(tmp_path, expiry=30)
    a.acquire(KEY)
    age(dead, 100)
    other = (4, 1, "x", "v1")
    a.acquire(other)
    a.release(other)
    marker = a.dir / f"{claim_name(other)}.done"
    old = marker.stat().st_mtime - 60
    os.utime(marker, (old, old))
    a.__exit__(None, None, None)
    assert worker(tmp_path).acquire(KEY) is ClaimState.ACQUIRED  # released at once, no wait for the expiry
    assert not dead.worker_file.exists() and not marker.exists()  # the dead worker and the old marker are gone


def test_queue_waits_for_held_units_and_counts_them_done_by_others(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    other = worker(tmp_path, expiry=2)  # held, not stale, while the queue runs (poll: 0.5 s)
    mine = UnitClaims(tmp_path, "explain", expiry_seconds=2)

    def key(unit: int) -> tuple:
        return (0, unit, "e")

    other.acquire(key(2))
    other.heartbeat()
    order: list[int] = []

    async def work(unit: int) -> UnitResult:
        order.append(unit)
        if unit == 5:  # meanwhile the other worker finishes unit 2
            other.release(key(2))
        return done_row(unit)

    report = StageReport("t", planned=6)
    with mine:
        queue = UnitQueue(list(range(6)), key, mine, report)
        asyncio.run(run_units(queue, work, report=report, writer=PartWriter(store, "failures"), max_in_flight=2))
    assert order == [0, 1, 3, 4, 5] and report.completed == 5 and report.other_workers == 1
    assert sorted(read_table(store, "failures").neuron) == [0, 1, 3, 4, 5]


def test_rows_of_a_unit_taken_over_meanwhile_are_dropped(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    mine, rival = UnitClaims(tmp_path, "explain", expiry_seconds=30), worker(tmp_path, expiry=30)

    async def work(unit: int) -> UnitResult:
        if unit == 1:  # this worker stalls past the expiry on unit 1 and another takes it over
            age(mine, 100)
            assert rival.acquire((0, 1)) is ClaimState.ACQUIRED
        return done_row(unit)

    report = StageReport("t", planned=3)
    with mine:
        mine._stop.set()  # no heartbeat thread to undo the stall
        queue = UnitQueue([0, 1, 2], lambda u: (0, u), mine, report)
        asyncio.run(run_units(queue, work, report=report, writer=PartWriter(store, "failures"), max_in_flight=1))
    assert sorted(read_table(store, "failures").neuron) == [0, 2]
    assert report.completed == 2 and report.other_workers == 1
    assert rival.owned([(0, 1)]) == [True]


def test_claims_need_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_explainer.errors import RunDirError

    a = worker(tmp_path)

    def no_links(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with pytest.raises(RunDirError, match="workers.claim=false"):
        a.acquire(KEY)


def test_a_claim_of_an_exited_process_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from neuron_explainer.stages.claims import owner_exited

    a, b = worker(tmp_path, expiry=3600.0), worker(tmp_path, expiry=3600.0)
    assert a.acquire(KEY) is ClaimState.ACQUIRED
    assert b.acquire(KEY) is ClaimState.HELD  # a lives (it is this very process)
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = json.loads(a.worker_file.read_text())
    claim = a.held[claim_name(KEY)]
    claim.write_text(json.dumps({**info, "pid": int(exited.stdout)}))  # as if a were that exited process
    assert owner_exited(claim)
    assert b.acquire(KEY) is ClaimState.ACQUIRED and b.taken_over == 1  # no wait for the hour-long expiry
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(json.dumps({**info, "host": "another-machine", "pid": int(exited.stdout)}))
    assert not owner_exited(elsewhere)  # another machine's pids mean nothing here: wait for the expiry
    elsewhere.write_text("not json")
    assert not owner_exited(elsewhere)

"""Unit scheduling: N units in flight, in completion order; rows written as units finish; failures counted."""

import asyncio
from pathlib import Path

import pytest

from neuron_explainer.datatypes import Failure
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import failure_row, read_table
from neuron_explainer.stages.runtime import FailureBudgetExceeded, StageReport, check_failure_budget
from neuron_explainer.stages.units import PartWriter, UnitResult, run_units


def row(unit: int) -> dict:
    return {"stage": "t", "layer": 0, "neuron": unit, "explanation_id": None, "kind": "ok", "message": "", "raw": None}


def test_one_slow_unit_does_not_hold_up_the_others(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []
    active = [0, 0]  # now, peak

    async def work(unit: int) -> UnitResult:
        events.append(("start", unit))
        active[0] += 1
        active[1] = max(active[1], active[0])
        await asyncio.sleep(0.4 if unit == 0 else 0.02)
        active[0] -= 1
        events.append(("end", unit))
        if unit == 5:
            return UnitResult(failures=[failure_row(0, 5, None, Failure(stage="t", kind="parse", message="bad"))])
        return UnitResult({"failures": [row(unit)]})  # any table will do: failures has a simple schema

    report = StageReport("t", planned=12)
    asyncio.run(run_units(list(range(12)), work, report=report, writer=PartWriter(RunStore(tmp_path), "failures"),
                          max_in_flight=3))  # fmt: skip
    assert active[1] == 3  # never more than N outstanding
    assert events[-1] == ("end", 0) and events.index(("start", 11)) < events.index(("end", 0))  # ran past it
    assert report.completed == 11 and report.failed == 1 and "0:5 parse: bad" in report.failures[0]
    assert len(read_table(RunStore(tmp_path), "failures")) == 12


def test_rows_of_finished_units_are_kept_when_a_unit_raises(tmp_path: Path) -> None:
    async def work(unit: int) -> UnitResult:
        await asyncio.sleep(0.01 * unit)
        if unit == 3:
            raise RuntimeError("a bug")
        return UnitResult({"failures": [row(unit)]})

    store = RunStore(tmp_path)
    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(run_units(list(range(6)), work, report=StageReport("t"), writer=PartWriter(store, "failures"),
                              max_in_flight=2))  # fmt: skip
    kept = set(read_table(store, "failures").neuron)
    assert {0, 1, 2} <= kept and 3 not in kept


@pytest.mark.parametrize(("failed", "attempted", "budget", "stops"), [
    (1, 2, 0.1, False), (2, 10, 0.1, True), (3, 100, 0.05, False), (6, 100, 0.05, True), (3, 4, 3, False),
    (4, 4, 3, True),
])  # fmt: skip
def test_failure_budget(failed: int, attempted: int, budget: float, stops: bool) -> None:
    report = StageReport("t", completed=attempted - failed, failed=failed)
    if stops:
        with pytest.raises(FailureBudgetExceeded, match="over the failure budget"):
            check_failure_budget(report, budget)
    else:
        check_failure_budget(report, budget)

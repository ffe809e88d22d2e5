"""Does the HTTP path keep `llm.max_in_flight` requests outstanding? Measured side by side in one run.

    python benchmarks/http_load.py [--latency 0.1 0.5 1.0] [--rounds 10] [--repeats 3]

Loopback stub OpenAI-compatible servers (neuron_explainer/llm/stub_server.py, each in its own process)
answer every chat completion after a fixed latency. With N requests outstanding at all times the best
possible rate is N / latency; each column reports achieved requests per second divided by that, at
N = 1, 8 and 64 (`llm.max_in_flight`), through the real back end as a run builds it:
- managed:    `openai:` back end + the managed wrapper, N requests kept outstanding by its limit;
- run_units:  the same, one request per unit scheduled by stages/runtime.run_units (the simulate stage's
              scheduling: a new unit starts as soon as one finishes);
- 2 replicas: run_units over a spec with two base URLs (llm/replicas.py), one stub each;
- + cache:    run_units with the run's response cache (SQLite) in front, every request a miss;
- typed create: as `managed`, but through the openai package's typed `chat.completions.create`, as the
              transport was before it posted plain JSON (for comparison).
Each cell is the median of `--repeats` measurements, the columns interleaved. Two more tables say why a
ratio falls short of 1: the most requests the servers saw outstanding at once (N when nothing on the
way serialises them), and the client's CPU time per request (the rate cannot exceed the cores it gets
divided by that; the stub servers run on the same cores).
"""

# This file is not named http.py: run as a script, its folder comes first on sys.path, and a module
# named `http` there would shadow the standard library's (which the HTTP client imports).

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuron_explainer.config import LLMConfig
from neuron_explainer.llm.base import Capability, GenerateParams, Message
from neuron_explainer.llm.cache import CachedBackend
from neuron_explainer.llm.managed import ManagedBackend
from neuron_explainer.llm.openai_compat import build_chat_payload, pooled_http_client
from neuron_explainer.llm.registry import build_backend
from neuron_explainer.records.store import RunStore
from neuron_explainer.stages.runtime import StageReport
from neuron_explainer.stages.units import PartWriter, UnitResult, run_units

IN_FLIGHT = (1, 8, 64)
COLUMNS = ("managed", "run_units", "2 replicas", "+ cache", "typed create")


class TypedCreate:
    """A chat-only back end over the openai package's typed `chat.completions.create` (the old transport)."""

    name, model = "openai", "stub"
    capabilities = frozenset({Capability.GENERATE})

    def __init__(self, url: str, max_in_flight: int) -> None:
        import openai

        self.client = openai.AsyncOpenAI(
            base_url=url, api_key="none", max_retries=0, http_client=pooled_http_client(max_in_flight)
        )

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """One chat completion through the typed client."""
        resp = await self.client.chat.completions.create(**build_chat_payload(self.model, messages, params))
        return [c.message.content or "" for c in resp.choices]

    async def aclose(self) -> None:
        """Close the client."""
        await self.client.close()


@contextmanager
def stub_process(latency: float) -> Iterator[str]:
    """A stub server in its own process; yields its base URL."""
    cmd = [sys.executable, "-m", "neuron_explainer.llm.stub_server", "--latency", str(latency)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def backend_for(column: str, urls: list[str], n: int, cache_dir: Path) -> Any:
    """The back end of one column, wrapped as a run wraps it."""
    settings = LLMConfig(max_in_flight=n, max_backoff_seconds=0.0)
    spec = "openai:stub@" + (",".join(urls) if column == "2 replicas" else urls[0])
    bare = TypedCreate(urls[0], n) if column == "typed create" else build_backend(spec, settings)
    backend: Any = ManagedBackend(bare, settings)  # type: ignore[arg-type]
    if column == "+ cache":
        backend = CachedBackend(backend, cache_dir / f"llm-{n}-{time.monotonic_ns()}.sqlite")
    return backend


@dataclass
class Cell:
    """One measurement."""

    ratio: float
    """Achieved requests per second / (in flight / latency)."""
    peak: int
    """Most requests outstanding at the stub server(s) (summed over the two replicas)."""
    cpu_ms: float
    """The client process's CPU time per request."""


def server_peaks(urls: list[str]) -> int:
    """Sum of the servers' peak outstanding requests since the last call (which resets them)."""
    return sum(json.loads(urllib.request.urlopen(url + "/stats", timeout=10).read())["peak"] for url in urls)


async def measure(column: str, urls: list[str], n: int, rounds: int, latency: float, cache_dir: Path) -> Cell:
    """`n * rounds` requests with `n` outstanding, after a warm-up that opens the connections."""
    backend = backend_for(column, urls, n, cache_dir)
    params = GenerateParams(max_tokens=8)
    counter = iter(range(10**9))

    async def one(_: Any = None) -> UnitResult:
        # a distinct prompt each time, so the cache column always misses
        await backend.generate([Message("user", f"request {next(counter)}")], params)
        return UnitResult()

    async def many(count: int) -> None:
        if column in ("managed", "typed create"):
            await asyncio.gather(*(one() for _ in range(count)))  # the wrapper's limit keeps n outstanding
        else:
            # the stage's own part writer: units without rows write no file, so only scheduling is measured
            writer = PartWriter(RunStore(cache_dir / "units"), "failures")
            await run_units(range(count), one, report=StageReport("bench"), writer=writer, max_in_flight=n)

    try:
        await many(2 * n)  # warm-up: 2 x n, so that each of 2 replicas has its connections open too
        server_peaks(urls)
        t0, cpu0 = time.perf_counter(), time.process_time()
        await many(n * rounds)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await backend.aclose()
    return Cell(n * rounds / seconds / (n / latency), server_peaks(urls), 1000 * cpu / (n * rounds))


def table(latency: float, rounds: int, repeats: int, urls: list[str], cache_dir: Path) -> None:
    """Measure every cell at one latency, the columns interleaved, and print three tables."""
    cells: dict[tuple[int, str], list[Cell]] = {}
    for _ in range(repeats):
        for n in IN_FLIGHT:
            for column in COLUMNS:
                cell = asyncio.run(measure(column, urls, n, rounds, latency, cache_dir))
                cells.setdefault((n, column), []).append(cell)
    header = f"{'in flight':>9} {'ideal req/s':>11}" + "".join(f"{c:>13}" for c in COLUMNS)
    views: list[tuple[str, Callable[[list[Cell]], str]]] = [
        (
            f"achieved requests/s / (in flight / latency), median of {repeats}",
            lambda cs: f"{statistics.median(c.ratio for c in cs):>13.2f}",
        ),
        ("most requests outstanding at the server(s)", lambda cs: f"{max(c.peak for c in cs):>13d}"),
        ("client CPU per request, ms (median)", lambda cs: f"{statistics.median(c.cpu_ms for c in cs):>13.2f}"),
    ]
    print(f"\nlatency {latency * 1000:.0f} ms, {rounds} rounds of requests per measurement")
    for title, show in views:
        print(f"-- {title}\n{header}")
        for n in IN_FLIGHT:
            print(f"{n:>9} {n / latency:>11.0f}" + "".join(show(cells[(n, c)]) for c in COLUMNS))


def main() -> None:
    """Start two stub servers per latency and print one table for each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.1, 0.5, 1.0], help="seconds per request")
    parser.add_argument("--rounds", type=int, default=10, help="requests per measurement = in flight x rounds")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load} before the run; the client and the stub servers share them")
    for latency in args.latency:
        with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
            urls = [stack.enter_context(stub_process(latency)) for _ in range(2)]
            table(latency, args.rounds, args.repeats, urls, Path(tmp))


if __name__ == "__main__":
    main()

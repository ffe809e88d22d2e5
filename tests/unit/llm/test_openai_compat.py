"""OpenAI-compatible back end: payloads, echo-logprob parsing, retry classification (no network)."""

import asyncio
import json

import pytest

try:  # the openai package ships its HTTP client as httpx2 in recent releases, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx

from neuron_explainer.config import LLMConfig
from neuron_explainer.llm.base import BackendError, GenerateParams, Message, RetryableBackendError, UnavailableError
from neuron_explainer.llm.fake import fake_tokenize
from neuron_explainer.llm.managed import ManagedBackend
from neuron_explainer.llm.openai_compat import (
    OpenAICompatBackend,
    build_chat_payload,
    build_echo_payload,
    parse_echo_logprobs,
)


def test_payloads() -> None:
    body = build_chat_payload(
        "m",
        [Message("system", "s"), Message("user", "u")],
        GenerateParams(max_tokens=7, temperature=1.0, n=3, seed=4, stop=("\n\n",)),
    )
    assert body == {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "max_tokens": 7,
        "temperature": 1.0,
        "top_p": 1.0,
        "n": 3,
        "seed": 4,
        "stop": ["\n\n"],
    }
    assert build_echo_payload("m", "p", 5) == {
        "model": "m",
        "prompt": "p",
        "max_tokens": 1,
        "temperature": 0.0,
        "echo": True,
        "logprobs": 5,
    }


def echo_logprobs(prompt: str, shift: int = 0) -> dict:
    """An echo response, plus 1 generated token, in the OpenAI convention (shift=0) or llama-cpp-python's
    (shift=1: top_logprobs[i] predicts token i+1, with token i's own logprob inserted)."""
    toks = fake_tokenize(prompt) + [("X", len(prompt))]
    tokens = [t for t, _ in toks]
    produced = [None] + [{t: -0.5, "other": -2.0} for t in tokens[1:]]  # distribution that produced token i
    own = [None] + [-0.5] * (len(tokens) - 1)
    if shift == 1:
        own = [None] + [-7.0] * (len(tokens) - 1)  # that server's own logprobs are shifted too: low, wrong
    if shift == 0:
        tops = produced
    else:
        tops = [dict(d or {}) for d in produced[1:]] + [{}]
        for i in range(1, len(tokens)):
            tops[i][tokens[i]] = own[i]
    return {"tokens": tokens, "text_offset": [o for _, o in toks], "token_logprobs": own, "top_logprobs": tops}


@pytest.mark.parametrize("shift", [0, 1])
def test_echo_parsing_detects_alignment(shift: int) -> None:
    prompt = "a\tb\nc\td"
    out = parse_echo_logprobs(prompt, echo_logprobs(prompt, shift))
    assert [(t.token, t.offset) for t in out] == fake_tokenize(prompt)  # generated token dropped
    for i, t in enumerate(out[:-1]):
        assert t.top[0] == (out[i + 1].token, -0.5)  # top of token i predicts token i+1
        assert dict(t.top).keys() <= {out[i + 1].token, "other"}  # no inserted own-token entry


def test_echo_parsing_refuses_what_fits_no_convention() -> None:
    lp = echo_logprobs("a\tb\nc\td")
    lp["top_logprobs"] = [None] + [{"zzz": -0.1}] * (len(lp["tokens"]) - 1)  # never the real text
    with pytest.raises(BackendError, match="cannot align"):
        parse_echo_logprobs("a\tb\nc\td", lp)
    with pytest.raises(BackendError, match="lack"):
        parse_echo_logprobs("x", {"tokens": []})


def backend_with(
    responses: list[tuple[int, dict | str]], max_attempts: int = 6, **kw
) -> tuple[ManagedBackend, list[dict]]:
    """The back end behind the managed wrapper (as every run builds it), answering from `responses`."""
    seen: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        status, body = responses[min(len(seen) - 1, len(responses) - 1)]
        if isinstance(body, str):  # a raw body, e.g. not JSON at all
            return httpx.Response(status, content=body.encode(), headers={"content-type": "application/json"})
        return httpx.Response(status, json=body)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    inner = OpenAICompatBackend("m", "http://127.0.0.1:9/v1", http_client=client, **kw)
    return ManagedBackend(inner, LLMConfig(max_attempts=max_attempts, max_backoff_seconds=0.01)), seen


CHAT_OK = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
}
ERR = {"error": {"message": "boom", "type": "x"}}


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(status: int) -> None:
    backend, seen = backend_with([(status, ERR), (status, ERR), (200, CHAT_OK)])
    assert asyncio.run(backend.generate([Message("user", "u")], GenerateParams())) == ["hi"]
    assert len(seen) == 3


@pytest.mark.parametrize(("status", "server_failed"), [(429, False), (409, False), (500, True), (503, True)])
def test_server_failures_are_unavailable_errors(status: int, server_failed: bool) -> None:
    # UnavailableError takes a replica out of its pool; a rate limit or a conflict does not
    backend, _ = backend_with([(status, ERR)], max_attempts=1)
    with pytest.raises(BackendError) as info:
        asyncio.run(backend.generate([Message("user", "u")], GenerateParams()))
    assert isinstance(info.value.__cause__, UnavailableError) is server_failed
    assert isinstance(info.value.__cause__, RetryableBackendError)


def test_retries_are_bounded() -> None:
    backend, seen = backend_with([(500, ERR)], max_attempts=3)
    with pytest.raises(BackendError, match="failed after 3 attempts: .*HTTP 500"):
        asyncio.run(backend.generate([Message("user", "u")], GenerateParams()))
    assert len(seen) == 3


@pytest.mark.parametrize(("status", "match"), [(401, "refused the API key"), (400, "HTTP 400 \\(not retryable\\)")])
def test_client_errors_fail_fast(status: int, match: str) -> None:
    backend, seen = backend_with([(status, ERR), (200, CHAT_OK)])
    with pytest.raises(BackendError, match=match):
        asyncio.run(backend.generate([Message("user", "u")], GenerateParams()))
    assert len(seen) == 1


NO_CHOICES = {**CHAT_OK, "choices": []}
ECHO_NO_CHOICES = {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": []}


@pytest.mark.parametrize("body", ["<html>bad gateway</html>", NO_CHOICES, {"unexpected": True}])
def test_malformed_answers_are_retried_typed_failures(body) -> None:
    backend, seen = backend_with([(200, body), (200, CHAT_OK)])
    assert asyncio.run(backend.generate([Message("user", "u")], GenerateParams())) == ["hi"]
    assert len(seen) == 2  # the malformed answer was retried, not a traceback
    backend, seen = backend_with([(200, body)], max_attempts=2)
    with pytest.raises(BackendError, match="malformed answer"):
        asyncio.run(backend.generate([Message("user", "u")], GenerateParams()))
    assert len(seen) == 2


@pytest.mark.parametrize("body", ["not json", ECHO_NO_CHOICES])
def test_malformed_logprob_answers_are_retried_typed_failures(body) -> None:
    backend, seen = backend_with([(200, body)], max_attempts=3)
    with pytest.raises(BackendError, match="malformed answer"):
        asyncio.run(backend.prompt_logprobs("a\tb", 2))
    assert len(seen) == 3


def vllm_completion(prompt: str, bos: bool) -> dict:
    """A vLLM /completions body for echo + logprobs=1 + prompt_logprobs=2, in vLLM's documented layout:
    prompt_logprobs[i] maps token-id strings to {logprob, rank, decoded_token} for the distribution that
    produced prompt token i (None first), top k plus token i itself."""
    toks = fake_tokenize(prompt)
    tokens = [t for t, _ in toks]
    ids = (["1"] if bos else []) + [str(100 + i) for i in range(len(tokens))]
    texts = (["<s>"] if bos else []) + tokens
    plp: list = [None]
    for i in range(1, len(ids)):
        # rank 1: the actual token; rank 2: "other"; a different id that decodes to the same "other" text
        plp.append(
            {
                ids[i]: {"logprob": -0.5, "rank": 1, "decoded_token": texts[i]},
                "7": {"logprob": -2.0, "rank": 2, "decoded_token": "other"},
                "8": {"logprob": -3.0, "rank": 3, "decoded_token": "other"},
            }
        )
    echo = {
        "tokens": tokens + ["X"],
        "text_offset": [o for _, o in toks] + [len(prompt)],
        "token_logprobs": [None] + [-0.5] * len(tokens),
        "top_logprobs": [None] + [{"zzz": -0.1}] * len(tokens),  # ignored in vllm mode
    }
    return {
        "id": "c",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": "X", "finish_reason": "length", "logprobs": echo, "prompt_logprobs": plp}],
    }


@pytest.mark.parametrize("bos", [False, True])
def test_vllm_prompt_logprobs(bos: bool) -> None:
    prompt = "a\tb\nc\td"
    backend, seen = backend_with([(200, vllm_completion(prompt, bos))], logprobs_api="vllm")
    out = asyncio.run(backend.prompt_logprobs(prompt, 2))
    assert seen[0]["prompt_logprobs"] == 2 and seen[0]["echo"] is True
    assert [(t.token, t.offset) for t in out] == fake_tokenize(prompt)
    for i, t in enumerate(out[:-1]):
        assert t.top == ((out[i + 1].token, -0.5), ("other", -2.0))  # same-text ids keep the larger logprob
    assert out[-1].top == ()


def test_vllm_mismatch_and_missing_prompt_logprobs_are_refused() -> None:
    prompt = "a\tb\nc\td"
    body = vllm_completion(prompt, bos=False)
    for d in body["choices"][0]["prompt_logprobs"][1:]:
        d[next(iter(d))]["decoded_token"] = "zzz"
    backend, _ = backend_with([(200, body)], logprobs_api="vllm")
    with pytest.raises(BackendError, match="cannot match"):
        asyncio.run(backend.prompt_logprobs(prompt, 2))
    del body["choices"][0]["prompt_logprobs"]
    backend, _ = backend_with([(200, body)], logprobs_api="vllm")
    with pytest.raises(BackendError, match="no prompt_logprobs"):
        asyncio.run(backend.prompt_logprobs(prompt, 2))

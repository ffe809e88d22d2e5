"""OpenAI-compatible HTTP back end (OpenAI, vLLM, llama.cpp server, ...) through the `openai` package.

Transport only, plus pure `build_*` / `parse_*` helpers that tests exercise without a network. Chat
completions serve `generate`; legacy completions with `echo` + `logprobs` serve `prompt_logprobs`, and
against vLLM (`logprobs_api="vllm"`) its `prompt_logprobs` extension supplies the distributions, keyed by
token id, so two tokens that decode to the same text cannot merge.
One call is one attempt. Failures are classified: 408/409/429/5xx, timeouts, connection errors and
malformed answers (a body that is not JSON, no choices) raise RetryableBackendError, which the managed
wrapper (llm/managed.py) retries; other 4xx (a bad API key above all) fail at once with a clear
message. The API key is read from an environment variable when the back end is built, and is never
logged or stored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from neuron_explainer.llm.base import (
    BackendError,
    Capability,
    GenerateParams,
    Message,
    RetryableBackendError,
    TokenLogprobs,
    UnavailableError,
)

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def build_chat_payload(model: str, messages: Sequence[Message], params: GenerateParams) -> dict[str, Any]:
    """Body of a /chat/completions request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "n": params.n,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def build_echo_payload(model: str, prompt: str, top_k: int) -> dict[str, Any]:
    """Body of a /completions request that echoes the prompt with its top-k logprobs."""
    return {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": top_k}


def build_vllm_payload(model: str, prompt: str, top_k: int) -> dict[str, Any]:
    """Echo (for the tokens and their text offsets) plus vLLM's `prompt_logprobs` (for the distributions)."""
    return {**build_echo_payload(model, prompt, 1), "prompt_logprobs": top_k}


def parse_vllm_prompt_logprobs(
    prompt: str, echo: dict[str, Any], prompt_logprobs: list[dict[str, Any] | None] | None
) -> list[TokenLogprobs]:
    """Per-token next-token predictions from vLLM's `prompt_logprobs`.

    `prompt_logprobs[i]` maps token ids to `{"logprob", "rank", "decoded_token"}`: the distribution that
    produced prompt token i (None for the first), holding the top k plus token i itself. The echo's
    `tokens` and `text_offset` give the token texts. The two lists are matched by checking that each echoed
    token appears in the distribution at its index; a list one longer (a BOS token the echo omits) is
    matched with an offset of one.

    Raises:
        BackendError: the response lacks the fields, or the two lists cannot be matched.
    """
    try:
        tokens: list[str] = echo["tokens"]
        offsets: list[int] = echo["text_offset"]
    except (KeyError, TypeError) as e:
        raise BackendError(f"the server's echoed logprobs lack {e}") from None
    if not prompt_logprobs:
        raise BackendError("the server returned no prompt_logprobs: is it vLLM, with prompt logprobs enabled?")
    n = sum(1 for off in offsets if off < len(prompt))
    for lead in (0, 1):
        if len(prompt_logprobs) - lead < n:
            continue
        dists = prompt_logprobs[lead : lead + n]
        fits = all(
            d is not None and any(e.get("decoded_token") == tokens[i] for e in d.values())
            for i, d in enumerate(dists)
            if i > 0 or lead
        )
        if fits:
            break
    else:
        raise BackendError(
            f"cannot match vLLM's prompt_logprobs ({len(prompt_logprobs)} positions) with the echoed tokens "
            f"({n} in the prompt): refusing to guess"
        )
    out = []
    for i in range(n):
        nxt = prompt_logprobs[lead + i + 1] if lead + i + 1 < len(prompt_logprobs) else None
        top: dict[str, float] = {}
        for entry in (nxt or {}).values():  # the top k, plus the actual next token (a true logprob too)
            text = entry.get("decoded_token")
            if text is not None and entry["logprob"] > top.get(text, float("-inf")):
                top[text] = float(entry["logprob"])
        ordered = tuple(sorted(top.items(), key=lambda kv: -kv[1]))
        out.append(TokenLogprobs(tokens[i], int(offsets[i]), ordered))
    return out


def parse_echo_logprobs(prompt: str, logprobs: dict[str, Any]) -> list[TokenLogprobs]:
    """Turn an echoed completion's `logprobs` object into per-token next-token predictions.

    In the OpenAI format `top_logprobs[i]` is the distribution that produced token i; our `top` of token
    i is the prediction of token i+1, so it is `top_logprobs[i + 1]`. Some servers put the prediction
    of the next token at i instead: detected from `token_logprobs` (each token's own logprob must appear
    in the distribution that produced it) and corrected, or refused when neither reading fits.

    Raises:
        BackendError: missing fields or an alignment that fits neither convention.
    """
    try:
        tokens: list[str] = logprobs["tokens"]
        offsets: list[int] = logprobs["text_offset"]
        own: list[float | None] = logprobs["token_logprobs"]
        tops: list[dict[str, float] | None] = logprobs["top_logprobs"]
    except (KeyError, TypeError) as e:
        raise BackendError(f"the server's echoed logprobs lack {e}: it may not support echo + logprobs") from None
    n = sum(1 for off in offsets if off < len(prompt))  # drop the generated token(s) after the prompt
    shift = _alignment(tokens, own, tops)
    out = []
    for i in range(n):
        j = i + 1 - shift  # index of the distribution predicting token i + 1
        top = dict(tops[j] or {}) if 0 <= j < len(tops) else {}
        own_i = own[i]
        if shift == 1 and own_i is not None and abs(top.get(tokens[i], 1e9) - own_i) < 1e-6:
            del top[tokens[i]]  # the server's inserted own-token entry, not part of this distribution
        ordered = tuple(sorted(top.items(), key=lambda kv: -kv[1]))
        out.append(TokenLogprobs(tokens[i], int(offsets[i]), ordered))
    return out


def _alignment(tokens: list[str], own: list[float | None], tops: list[dict[str, float] | None]) -> int:
    """0 if top_logprobs[i] is the distribution that produced token i (OpenAI), 1 if it predicts token i+1.

    Decided by which reading makes the top alternative agree with the actual text more often: under the
    right reading the most likely token is often the one that really comes (prompts here are regular:
    a tab after each token, a newline after each label). llama-cpp-python's server uses the second
    reading and also inserts token i's own (shifted) logprob into top_logprobs[i]; that entry is left
    out when testing the second reading. `own` is not trusted: that server shifts it too.
    """
    del own  # see above

    def argmax(d: dict[str, float], skip: str | None = None) -> str | None:
        items = [(v, k) for k, v in d.items() if k != skip]
        return max(items)[1] if items else None

    same = nxt = total = 0
    for i in range(1, len(tokens) - 1):
        dist = tops[i]
        if not dist:
            continue
        total += 1
        same += argmax(dist) == tokens[i]
        nxt += argmax(dist, skip=tokens[i]) == tokens[i + 1]
    if total == 0 or max(same, nxt) < 0.05 * total:
        raise BackendError(
            f"cannot align the server's echoed logprobs with its tokens ({same}/{total} positions fit "
            f"'produced by', {nxt}/{total} fit 'predicts next'): refusing to guess"
        )
    return 1 if nxt > same else 0


def classify(exc: BaseException, base_url: str, api_key_env: str) -> BackendError:
    """The typed error of one failed request: retryable (timeouts, 408/409/429/5xx) or not (other 4xx).

    Failures of the server rather than of the request (connection errors, timeouts, 500/502/503/504) are
    UnavailableError, the retryable kind that also takes a replica out of a pool.
    """
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return BackendError(f"{base_url} refused the API key (HTTP 401): set ${api_key_env}")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in RETRYABLE_STATUS:
            # 500/502/503/504: the server is failing, not the request, so a replica pool takes it out
            kind = UnavailableError if exc.status_code >= 500 else RetryableBackendError
            return kind(f"{base_url} answered HTTP {exc.status_code}: {exc.message}"[:500])
        return BackendError(f"{base_url} answered HTTP {exc.status_code} (not retryable): {exc.message}"[:500])
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return UnavailableError(f"{base_url} unreachable or timed out: {exc}")
    return RetryableBackendError(f"{base_url} sent a malformed answer: {type(exc).__name__}: {exc}"[:500])


def pooled_http_client(keep_alive: int) -> Any:
    """One HTTP client for all of a back end's requests (its replicas' too), keeping `keep_alive` connections.

    Connections are not capped here, so nothing queues behind the client's pool: the managed wrapper's
    `max_in_flight` is the one limit. Up to `keep_alive` idle connections stay open for reuse: the
    registry asks for `max_in_flight` per replica, since with fewer the replicas' connections evict each
    other and requests reconnect (the openai package keeps 100, too few for a large `max_in_flight`).
    """
    import openai

    try:  # the openai package ships its HTTP client as httpx2 in recent releases, httpx before
        import httpx2 as httpx
    except ImportError:
        import httpx  # type: ignore[no-redef]

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=keep_alive)
    return openai.DefaultAsyncHttpxClient(limits=limits)


MALFORMED = (ValueError, KeyError, IndexError, TypeError, AttributeError)
"""What reading a response that is not the documented JSON raises (JSONDecodeError is a ValueError)."""


class OpenAICompatBackend:
    """A model behind an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        prompt_logprobs: bool = True,
        logprobs_api: str = "echo",
        http_client: Any = None,
    ) -> None:
        import openai

        if logprobs_api not in ("echo", "vllm"):
            raise ValueError(f"logprobs_api must be 'echo' or 'vllm', got {logprobs_api!r}")
        self.logprobs_api = logprobs_api
        self.name = "vllm" if logprobs_api == "vllm" else "openai"
        self.model = model
        self.base_url = base_url
        self.capabilities = frozenset(
            {Capability.GENERATE} | ({Capability.PROMPT_LOGPROBS} if prompt_logprobs else set())
        )
        # Local servers accept any key; a missing variable is only an error when the server says so.
        key = os.environ.get(api_key_env) or "no-key"
        self.api_key_env = api_key_env
        self._client = openai.AsyncOpenAI(
            base_url=base_url, api_key=key, timeout=timeout, max_retries=0, http_client=http_client
        )
        self.requests = 0
        """HTTP requests sent (each retry by the managed wrapper is one more)."""
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        """Tokens as the server's `usage` reports them (successful responses only)."""

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One attempt: POST `body` and return the answer's JSON; every failure becomes a typed BackendError.

        The openai client's low-level `post` with `cast_to=object` returns plain JSON: it skips the typed
        parameter transformation and response models of `chat.completions.create`, which cost more CPU
        per request than all of the HTTP (benchmarks/http_load.py) and would cap the rate at high
        `max_in_flight`.
        """
        import openai

        self.requests += 1
        try:
            resp = await self._client.post(path, body=body, cast_to=object)
        except (openai.OpenAIError, *MALFORMED) as e:
            raise classify(e, self.base_url, self.api_key_env) from e
        if not isinstance(resp, dict):
            raise self._malformed(f"{type(resp).__name__} instead of a JSON object")
        usage = resp.get("usage")
        if isinstance(usage, dict):
            for key in self.usage:
                count = usage.get(key)
                self.usage[key] += count if isinstance(count, int) else 0
        return resp

    def _malformed(self, what: str) -> RetryableBackendError:
        return RetryableBackendError(f"{self.base_url} sent a malformed answer: {what}")

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Chat completions; one string per choice."""
        resp = await self._post("/chat/completions", build_chat_payload(self.model, messages, params))
        try:
            texts = [c["message"]["content"] or "" for c in resp["choices"]]
        except MALFORMED as e:
            raise self._malformed(f"{type(e).__name__}: {e}") from e
        if len(texts) != params.n or not all(isinstance(t, str) for t in texts):
            raise self._malformed(f"{len(texts)} choices for {params.n} requested, or one not text")
        return texts

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """Prompt logprobs from /completions: echo, or vLLM's prompt_logprobs (`include` is ignored over HTTP)."""
        build = build_vllm_payload if self.logprobs_api == "vllm" else build_echo_payload
        resp = await self._post("/completions", build(self.model, prompt, top_k))
        try:
            choice = resp["choices"][0]
            echo = choice.get("logprobs")
        except MALFORMED as e:
            raise self._malformed(f"{type(e).__name__}: {e}") from e
        if echo is None:
            raise BackendError(f"{self.base_url} returned no logprobs for an echo request")
        if not isinstance(echo, dict):
            raise self._malformed(f"logprobs are a {type(echo).__name__}, not an object")
        if self.logprobs_api == "vllm":
            return parse_vllm_prompt_logprobs(prompt, echo, choice.get("prompt_logprobs"))
        return parse_echo_logprobs(prompt, echo)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()

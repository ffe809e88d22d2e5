"""CachedBackend: a persistent SQLite response cache in front of any back end.

The key is a sha256 of exactly what changes the output: back end, model, method, the prompt or
messages, and the semantic sampling settings. `n` is not part of it: each sample gets its own key with
its index, so samples at temperature 1 stay distinct and asking for more samples later only generates
the missing ones. Prompt logprobs are cached only when asked for (`cache_logprobs`), because a
simulator prompt's logprobs weigh hundreds of kilobytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuron_explainer.llm.base import GenerateParams, LLMBackend, Message, TokenLogprobs


class CachedBackend:
    """Wraps a back end; same protocol, cached."""

    def __init__(self, inner: LLMBackend, path: str | Path, *, cache_logprobs: bool = False) -> None:
        self.inner = inner
        self.name, self.model, self.capabilities = inner.name, inner.model, inner.capabilities
        self.cache_logprobs = cache_logprobs
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        # Every answer is written from the event loop as it arrives. With the default rollback journal each
        # commit waits for an fsync (26 ms here), which capped a whole run at about 40 answers/s whatever
        # `max_in_flight`; a write-ahead log without a sync per commit takes 0.3 ms. An application crash
        # loses nothing; a power cut may lose the last answers, which are then requested again.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def __getattr__(self, item: str) -> Any:  # e.g. `tokenizer`, `supports_prefill` of the inner back end
        return getattr(self.inner, item)

    def _key(self, payload: dict[str, Any]) -> str:
        data = {"backend": self.inner.name, "model": self.inner.model, **payload}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def _get(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(zlib.decompress(row[0]))

    def _put(self, items: list[tuple[str, Any]]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO responses VALUES (?, ?)",
            [(k, zlib.compress(json.dumps(v).encode())) for k, v in items],
        )
        self._db.commit()

    def _sample_keys(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        base = {
            "method": "generate",
            "messages": [[m.role, m.content] for m in messages],
            **{k: v for k, v in dataclasses.asdict(params).items() if k != "n"},
        }
        return [self._key({**base, "sample_idx": i}) for i in range(params.n)]

    def _lookup(self, keys: list[str]) -> tuple[dict[int, Any], list[int]]:
        found = {i: self._get(k) for i, k in enumerate(keys)}
        missing = [i for i, v in found.items() if v is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        return found, missing

    def _store(self, keys: list[str], found: dict[int, Any], missing: list[int], fresh: list[str]) -> list[str]:
        if len(fresh) != len(missing):
            raise ValueError(f"back end returned {len(fresh)} samples for {len(missing)} requested")
        self._put([(keys[i], text) for i, text in zip(missing, fresh, strict=True)])
        found.update(zip(missing, fresh, strict=True))
        return [found[i] for i in range(len(keys))]

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Cached per sample index; only missing samples are generated."""
        keys = self._sample_keys(messages, params)
        found, missing = self._lookup(keys)
        fresh = await self.inner.generate(messages, dataclasses.replace(params, n=len(missing))) if missing else []
        return self._store(keys, found, missing, fresh)

    async def generate_batch(self, requests: Sequence[tuple[Sequence[Message], GenerateParams]]) -> list[list[str]]:
        """`generate` for many chats at once, cached per request and sample; only the misses go to the back end."""
        keys = [self._sample_keys(m, p) for m, p in requests]
        looked = [self._lookup(k) for k in keys]
        asks = [(m, dataclasses.replace(p, n=len(miss))) for (m, p), (_, miss) in zip(requests, looked, strict=True)
                if miss]  # fmt: skip
        answers = iter(await self.inner.generate_batch(asks) if asks else [])  # type: ignore[attr-defined]
        return [self._store(k, found, miss, next(answers) if miss else []) for k, (found, miss) in zip(keys, looked,
                strict=True)]  # fmt: skip

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """Cached when `cache_logprobs` is set."""
        if not self.cache_logprobs:
            return await self.inner.prompt_logprobs(prompt, top_k, include)
        key = self._key({"method": "prompt_logprobs", "prompt": prompt, "top_k": top_k, "include": sorted(include)})
        value = self._get(key)
        if value is not None:
            self.hits += 1
            return [TokenLogprobs(t, o, tuple((a, b) for a, b in top)) for t, o, top in value]
        self.misses += 1
        result = await self.inner.prompt_logprobs(prompt, top_k, include)
        self._put([(key, [[t.token, t.offset, [list(p) for p in t.top]] for t in result])])
        return result

    async def aclose(self) -> None:
        """Close the database and the inner back end."""
        self._db.close()
        await self.inner.aclose()

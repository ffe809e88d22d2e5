"""Corpus documents and the deterministic excerpt stream.

Documents come through `datasets` (a hub id, or local txt/jsonl/json/parquet files) or from a builtin
corpus that a registry package ships. Excerpts are `excerpt_len` contiguous tokens inside one document:
every non-overlapping window after a seeded random offset, optionally capped per document.
"""

from __future__ import annotations

import bz2
import glob
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.config import CorpusConfig
from neuron_explainer.errors import CorpusError

logger = logging.getLogger(__name__)

LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class Corpus:
    """An iterable of documents with its provenance."""

    documents: Callable[[], Iterable[str]]
    """Returns a fresh iterator over document texts, in a fixed order."""
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Excerpt:
    """One excerpt of the excerpt stream."""

    excerpt_id: int
    doc_index: int
    token_start: int
    """Offset of the first token in the document's token sequence."""
    token_ids: list[int]


# -- builtin corpora ----------------------------------------------------------------------------------
def _gensim_data() -> Path:
    try:
        import gensim
    except ImportError as e:
        raise CorpusError("builtin gensim corpora need the offline extra: pip install -e '.[offline]'") from e
    return Path(gensim.__file__).parent / "test" / "test_data"


def _lee_docs() -> tuple[list[Path], Callable[[], Iterable[str]]]:
    path = _gensim_data() / "lee_background.cor"

    def docs() -> Iterator[str]:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield line.strip()

    return [path], docs


def _enwiki_docs() -> tuple[list[Path], Callable[[], Iterable[str]]]:
    path = _gensim_data() / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

    def docs() -> Iterator[str]:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki

        with bz2.open(path, "rb") as f:
            for _title, text, _pageid in extract_pages(f, filter_namespaces=("0",)):
                if text.lstrip().lower().startswith("#redirect"):
                    continue
                clean = _tidy_wiki(filter_wiki(text))
                if clean:
                    yield clean

    return [path], docs


def _tidy_wiki(text: str) -> str:
    """Drop heading markers, list bullets and empty lines that survive gensim's markup filter."""
    lines = []
    for line in text.splitlines():
        line = line.strip().strip("=").strip()
        line = line.lstrip("*#:; ").replace("'''", "").replace("''", "").strip()
        if len(line) > 1:
            lines.append(line)
    return "\n".join(lines)


def _interleave(*sources: Callable[[], Iterable[str]]) -> Callable[[], Iterator[str]]:
    def docs() -> Iterator[str]:
        iters = [iter(s()) for s in sources]
        while iters:
            for it in list(iters):
                try:
                    yield next(it)
                except StopIteration:
                    iters.remove(it)

    return docs


def _english_prose() -> tuple[list[Path], Callable[[], Iterable[str]]]:
    lee_files, lee = _lee_docs()
    wiki_files, wiki = _enwiki_docs()
    return lee_files + wiki_files, _interleave(lee, wiki)


BUILTIN_CORPORA: dict[str, tuple[str, Callable[[], tuple[list[Path], Callable[[], Iterable[str]]]]]] = {
    "english-prose": (
        "Lee news corpus (300 Australian news articles) interleaved with 200 English Wikipedia "
        "articles (markup stripped), both from gensim's test data",
        _english_prose,
    ),
    "gensim-lee": ("Lee news corpus: 300 Australian news articles, from gensim's test data", _lee_docs),
    "gensim-enwiki": ("200 English Wikipedia articles, markup stripped, from gensim's test data", _enwiki_docs),
}
"""builtin name -> (description, loader returning source files and a document iterator factory)."""


# -- datasets-backed corpora -------------------------------------------------------------------------
def _expand_local(source: str) -> list[Path]:
    paths: list[Path] = []
    for part in source.split(","):
        part = part.strip()
        p = Path(part).expanduser()
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix in LOCAL_FORMATS and q.is_file())
        elif any(ch in part for ch in "*?["):
            paths += sorted(Path(q) for q in glob.glob(str(p), recursive=True))
        elif p.exists():
            paths.append(p)
        else:
            return []
    return paths


def _looks_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or any(source.endswith(ext) for ext in LOCAL_FORMATS) or "*" in source


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode())
        with p.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _datasets_docs(cfg: CorpusConfig, builder: str, kwargs: dict[str, Any]) -> Callable[[], Iterable[str]]:
    def docs() -> Iterator[str]:
        import datasets

        try:
            ds = datasets.load_dataset(builder, **kwargs, streaming=True)
            for row in ds:
                if cfg.text_column not in row:
                    raise CorpusError(
                        f"corpus rows have no column {cfg.text_column!r} (columns: {sorted(row)}); "
                        "set corpus.text_column"
                    )
                text = row[cfg.text_column]
                if isinstance(text, str) and text.strip():
                    yield text
        except CorpusError:
            raise
        except Exception as e:  # datasets raises many types for unreadable or malformed files
            raise CorpusError(f"cannot read corpus {cfg.source!r}: {type(e).__name__}: {e}".split("\n")[0]) from e

    return docs


def open_corpus(cfg: CorpusConfig) -> Corpus:
    """Resolve a corpus config to documents and provenance (nothing is read yet).

    Raises:
        CorpusError: unknown builtin, missing local files, or mixed local formats.
    """
    source = cfg.source
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_CORPORA:
            raise CorpusError(f"unknown builtin corpus {name!r}; builtin corpora: {', '.join(sorted(BUILTIN_CORPORA))}")
        description, loader = BUILTIN_CORPORA[name]
        files, docs = loader()
        return Corpus(
            docs,
            {
                "source": source,
                "description": description,
                "files": [f.name for f in files],
                "sha256": _hash_files(files),
            },
        )
    if _looks_local(source) or Path(source).expanduser().exists():
        paths = _expand_local(source)
        if not paths:
            raise CorpusError(f"no corpus files found at {source!r}")
        kinds = {LOCAL_FORMATS.get(p.suffix) for p in paths}
        if None in kinds or len(kinds) != 1:
            raise CorpusError(
                f"corpus files must all be one of {sorted(LOCAL_FORMATS)}; got {sorted({p.suffix for p in paths})}"
            )
        if all(p.stat().st_size == 0 for p in paths):
            raise CorpusError(f"corpus {source!r} has no documents: every file is empty")
        builder = str(kinds.pop())
        kwargs: dict[str, Any] = {"data_files": [str(p) for p in paths], "split": "train"}
        if builder == "text":
            kwargs["sample_by"] = "document"  # one .txt file = one document
        return Corpus(
            _datasets_docs(cfg, builder, kwargs),
            {"source": source, "files": [str(p) for p in paths], "sha256": _hash_files(paths)},
        )
    kwargs = {"name": cfg.name, "split": cfg.split, "revision": cfg.revision}
    return Corpus(
        _datasets_docs(cfg, source, kwargs),
        {
            "source": source,
            "hub_dataset": source,
            "name": cfg.name,
            "split": cfg.split,
            "revision": cfg.revision,
            "text_column": cfg.text_column,
        },
    )


def _windows(seed: int, doc_index: int, n_tokens: int, excerpt_len: int, cap: int | None) -> list[int]:
    """Start offsets of a document's excerpts.

    Non-overlapping windows after a seeded offset within the leftover tokens; with a cap, a seeded
    subset of those windows, in document order.
    """
    n_all = n_tokens // excerpt_len
    if n_all == 0:
        return []
    rng = np.random.default_rng([seed, doc_index])
    start = int(rng.integers(0, n_tokens - n_all * excerpt_len + 1))
    chosen: list[int] = list(range(n_all))
    if cap is not None and cap < n_all:
        chosen = sorted(int(i) for i in rng.choice(n_all, size=cap, replace=False))
    return [start + w * excerpt_len for w in chosen]


def iter_excerpts(
    documents: Iterable[str],
    tokenize: Callable[[str], list[int]],
    *,
    excerpt_len: int,
    seed: int,
    excerpts_per_doc: int | None,
    limit: int,
) -> Iterator[Excerpt]:
    """The excerpt stream: ids 0, 1, ... in document order, at most `limit` excerpts.

    Documents shorter than `excerpt_len` tokens give none. Deterministic given the seed.
    """
    next_id = 0
    for doc_index, text in enumerate(documents):
        if next_id >= limit:
            return
        ids = tokenize(text)
        for s in _windows(seed, doc_index, len(ids), excerpt_len, excerpts_per_doc):
            if next_id >= limit:
                return
            yield Excerpt(next_id, doc_index, s, ids[s : s + excerpt_len])
            next_id += 1

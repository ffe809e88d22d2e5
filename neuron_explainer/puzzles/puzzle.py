"""Neuron puzzles: synthetic neurons with a known explanation (docs/method.md, "Puzzles"; docs/puzzles.md).

A puzzle file is YAML: a list of puzzles, each with `id`, `theme`, `explanation` (the ground truth),
`false_explanations` (hand-written near misses) and `sentences`, where `{token|level}` marks a token
with its activation 0-10 and every other token is 0. Sentences are split into tokens here: a word, a
number, or one punctuation character, each carrying the whitespace before it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import ConfigError

DEFAULT_PUZZLES = Path(__file__).resolve().parents[2] / "puzzles" / "puzzles_v1.yaml"
MIN_FALSE = 2
"""Hand-written false explanations per puzzle, at least (the top-tokens one is added by code)."""
TOP_TOKEN_LEVEL = 5
"""Tokens at this level or above count as high-activation for the top-tokens false explanation."""

_TOKEN = re.compile(r"(\s*)(?:\{([^{}|\s]+)\|(\d+)\}|(\w+)|([^\w\s]))")


@dataclass(frozen=True)
class Puzzle:
    """One synthetic neuron."""

    id: str
    theme: str
    explanation: str
    false_explanations: tuple[str, ...]
    """Hand-written near misses, then the generated three-most-common-tokens explanation."""
    records: tuple[ActivationRecord, ...]
    """Every sentence, activations 0-10."""
    evidence_idx: tuple[int, ...] | None = None
    """Indices of the sentences shown to an explainer (None: the even positions)."""

    @property
    def evidence(self) -> list[ActivationRecord]:
        """Sentences shown to an explainer."""
        if self.evidence_idx is None:
            return list(self.records[0::2])
        return [self.records[i] for i in self.evidence_idx]

    @property
    def held_out(self) -> list[ActivationRecord]:
        """Sentences an explanation is judged on (all the others)."""
        if self.evidence_idx is None:
            return list(self.records[1::2])
        return [r for i, r in enumerate(self.records) if i not in set(self.evidence_idx)]


def tokenize_marked(sentence: str) -> ActivationRecord:
    """Split a marked sentence into tokens and activations.

    Raises:
        ConfigError: text that is neither a token nor a well-formed `{token|level}` mark, or a level > 10.
    """
    tokens: list[str] = []
    levels: list[float] = []
    pos = 0
    for m in _TOKEN.finditer(sentence):
        if m.start() != pos:
            break
        space, marked, level, word, punct = m.groups()
        if marked is not None:
            if int(level) > 10:
                raise ConfigError(f"level {level} above 10 in {sentence!r}")
            tokens.append(space + marked)
            levels.append(float(level))
        else:
            tokens.append(space + (word if word is not None else punct))
            levels.append(0.0)
        pos = m.end()
    if sentence[pos:].strip():
        raise ConfigError(f"cannot tokenize {sentence[pos : pos + 20]!r} in puzzle sentence {sentence!r}")
    return ActivationRecord(tokens=tokens, activations=levels)


def top_tokens_explanation(records: list[ActivationRecord]) -> str:
    """The baseline false explanation: the three most common high-activation tokens."""
    counts = Counter(
        t.strip() for r in records for t, a in zip(r.tokens, r.activations, strict=True) if a >= TOP_TOKEN_LEVEL
    )
    top = [f'"{t}"' for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]
    if not top:
        raise ConfigError("a puzzle has no token at a high level: it cannot have a top-tokens explanation")
    listed = top[0] if len(top) == 1 else ", ".join(top[:-1]) + f" and {top[-1]}"
    return f"the tokens {listed}"


def load_puzzles(path: str | Path | None = None) -> list[Puzzle]:
    """Load and validate a puzzle file (default: puzzles/puzzles_v1.yaml).

    A `.json` file is read in the layout of OpenAI's published puzzles (puzzles/openai_json.py); any
    other file as our YAML format (docs/puzzles.md).

    Raises:
        ConfigError: a missing file, malformed YAML, a missing field, duplicate ids, too few false
            explanations, a puzzle that never fires or always fires, or an untokenizable sentence.
    """
    path = Path(path) if path else DEFAULT_PUZZLES
    if not path.is_file():
        raise ConfigError(f"puzzle file not found: {path}")
    if path.suffix == ".json":
        from neuron_explainer.puzzles.openai_json import load_openai_puzzles

        return load_openai_puzzles(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path} must hold a non-empty list of puzzles")
    puzzles, seen = [], set()
    for i, item in enumerate(data):
        where = f"{path}: puzzle {item.get('id', i) if isinstance(item, dict) else i}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} is not a mapping")
        missing = {"id", "theme", "explanation", "false_explanations", "sentences"} - set(item)
        if missing:
            raise ConfigError(f"{where} lacks {sorted(missing)}")
        if item["id"] in seen:
            raise ConfigError(f"{where}: duplicate id")
        seen.add(item["id"])
        false = [str(f) for f in item["false_explanations"]]
        if len(false) < MIN_FALSE:
            raise ConfigError(f"{where} needs at least {MIN_FALSE} hand-written false explanations")
        try:
            records = [tokenize_marked(str(s)) for s in item["sentences"]]
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if len(records) < 4:
            raise ConfigError(f"{where} needs at least 4 sentences (evidence and held-out)")
        fires = [max(r.activations) > 0 for r in records]
        if not any(fires[0::2]) or not any(fires[1::2]):
            raise ConfigError(f"{where}: both the evidence and the held-out sentences must fire somewhere")
        if all(fires):
            raise ConfigError(f"{where} needs at least one sentence where it does not fire")
        generated = top_tokens_explanation(records)
        puzzles.append(
            Puzzle(str(item["id"]), str(item["theme"]), str(item["explanation"]), (*false, generated), tuple(records))
        )
    return puzzles

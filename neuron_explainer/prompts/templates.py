"""Locate and load the versioned prompt templates and few-shot examples under prompts/.

Templates are plain files reviewed like code; nothing is read at import time, and loads are cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from neuron_explainer.errors import ConfigError

DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
"""The repository's prompts/ directory (the default `prompts_dir`)."""


@dataclass(frozen=True)
class FewShotSimulation:
    """One simulator few-shot neuron: explanation, tokens, 0-10 levels, and where 'unknown' ends."""

    explanation: str
    tokens: tuple[str, ...]
    levels: tuple[int, ...]
    unknown_until: int


@dataclass(frozen=True)
class SimulatorTemplate:
    """All-at-once simulator prompt: versioned intro text and few-shot neurons."""

    version: str
    intro: str
    examples: tuple[FewShotSimulation, ...]
    view: str = "current_token"
    """How activations pair with tokens (neuron_explainer/records/views.py); set in the .md front matter."""
    name: str = "v1"
    """The version name the template was loaded as (`v1` for `all_at_once_v1.md`)."""
    one_at_a_time_intro: str | None = None
    """Instructions of the one-at-a-time simulator (`one_at_a_time_<name>.md`), if that file exists."""
    logprob_free_intro: str | None = None
    """Instructions of the logprob-free simulator (`logprob_free_<name>.md`), if that file exists."""

    def intro_for(self, method: str) -> str:
        """The instructions of `method` (one_at_a_time or logprob_free) in this version.

        Raises:
            ConfigError: this version has no template for that method.
        """
        text = self.one_at_a_time_intro if method == "one_at_a_time" else self.logprob_free_intro
        if text is None:
            raise ConfigError(f"simulator prompt version {self.name!r} has no {method}_{self.name}.md template")
        return text


@dataclass(frozen=True)
class FewShotExcerpt:
    """One excerpt of an explainer few-shot neuron."""

    tokens: tuple[str, ...]
    levels: tuple[int, ...]


@dataclass(frozen=True)
class FewShotExplanation:
    """One explainer few-shot neuron: excerpts and the explanation written for them."""

    explanation: str
    excerpts: tuple[FewShotExcerpt, ...]


EXPLAINER_STYLES = ("token_activations", "highlights", "top_tokens")


@dataclass(frozen=True)
class ExplainerTemplate:
    """Explainer prompt: versioned instructions, few-shot neurons, and how the evidence is laid out.

    `token_activations` (the paper's format) lists every token with its 0-10 activation. `highlights`
    shows a short context before each excerpt's strongest token, marked [[like this]]: tiny local models
    copy the few-shot answers of the long format, but can summarise a list of marked words. `top_tokens`
    (the token-space baseline) lists only the most active tokens with their counts, no context.
    """

    version: str
    intro: str
    examples: tuple[FewShotExplanation, ...]
    style: str = "token_activations"
    answer_prefix: str = "The main thing this neuron does is find"
    """The model continues this sentence (prefilled where the back end supports it)."""
    explanation_prefix: str = ""
    """Prepended to the model's continuation to make the stored explanation a noun phrase."""
    view: str = "current_token"
    """How activations pair with tokens (neuron_explainer/records/views.py)."""


def _front_matter(path: Path, text: str) -> tuple[dict[str, Any], str]:
    """Split an optional leading `---` YAML block (template settings) from the template text."""
    if not text.startswith("---"):
        return {}, text
    _, meta, body = text.split("---", 2)
    data = yaml.safe_load(meta) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the front matter must be a mapping")
    return data, body.strip()


def _check_meta(path: Path, meta: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(meta) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown front-matter keys {sorted(unknown)}")


def _view(path: Path, meta: dict[str, Any]) -> str:
    from neuron_explainer.records.views import VIEWS

    view = str(meta.get("view", "current_token"))
    if view not in VIEWS:
        raise ConfigError(f"{path}: view must be one of {VIEWS}, got {view!r}")
    return view


def read_prompt(path: Path) -> str:
    """A prompt file's text, stripped.

    Raises:
        ConfigError: the file does not exist.
    """
    return _read(path)


def _read(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}")
    return path.read_text(encoding="utf-8").strip()


def _yaml(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(_read(path))
    if not isinstance(data, list):
        raise ConfigError(f"{path} must hold a list of few-shot examples")
    return data


def _levels(path: Path, tokens: list[str], levels: list[int]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if len(tokens) != len(levels):
        raise ConfigError(f"{path}: an example has {len(tokens)} tokens but {len(levels)} levels")
    if any(not 0 <= v <= 10 for v in levels):
        raise ConfigError(f"{path}: levels must be integers 0..10")
    return tuple(tokens), tuple(int(v) for v in levels)


@cache
def load_simulator_template(prompts_dir: str | None = None, version: str = "v1") -> SimulatorTemplate:
    """The all-at-once simulator template `simulator/all_at_once_<version>.md` + `fewshot_<version>.yaml`."""
    root = Path(prompts_dir) if prompts_dir else DEFAULT_PROMPTS_DIR
    fewshot = root / "simulator" / f"fewshot_{version}.yaml"
    examples = []
    for ex in _yaml(fewshot):
        tokens, levels = _levels(fewshot, ex["tokens"], ex["levels"])
        examples.append(FewShotSimulation(ex["explanation"], tokens, levels, int(ex.get("unknown_until", 0))))
    md = root / "simulator" / f"all_at_once_{version}.md"
    meta, intro = _front_matter(md, _read(md))
    _check_meta(md, meta, {"view"})
    other = {m: root / "simulator" / f"{m}_{version}.md" for m in ("one_at_a_time", "logprob_free")}
    return SimulatorTemplate(
        f"simulator/all_at_once_{version}",
        intro,
        tuple(examples),
        view=_view(md, meta),
        name=version,
        one_at_a_time_intro=_read(other["one_at_a_time"]) if other["one_at_a_time"].is_file() else None,
        logprob_free_intro=_read(other["logprob_free"]) if other["logprob_free"].is_file() else None,
    )


@cache
def load_explainer_template(prompts_dir: str | None = None, version: str = "v1") -> ExplainerTemplate:
    """The explainer template `explainer/<version>.md` (+ `explainer/fewshot_<version>.yaml` if present).

    The .md file may open with a `---` YAML block setting `style`, `answer_prefix` and
    `explanation_prefix` (see ExplainerTemplate).
    """
    root = Path(prompts_dir) if prompts_dir else DEFAULT_PROMPTS_DIR
    md = root / "explainer" / f"{version}.md"
    meta, intro = _front_matter(md, _read(md))
    _check_meta(md, meta, {"style", "answer_prefix", "explanation_prefix", "view"})
    style = meta.get("style", "token_activations")
    if style not in EXPLAINER_STYLES:
        raise ConfigError(f"{md}: style must be one of {EXPLAINER_STYLES}, got {style!r}")
    fewshot = root / "explainer" / f"fewshot_{version}.yaml"
    examples = []
    for ex in _yaml(fewshot) if fewshot.exists() else []:
        excerpts = tuple(FewShotExcerpt(*_levels(fewshot, e["tokens"], e["levels"])) for e in ex["excerpts"])
        examples.append(FewShotExplanation(ex["explanation"], excerpts))
    return ExplainerTemplate(
        f"explainer/{version}",
        intro,
        tuple(examples),
        style=style,
        answer_prefix=str(meta.get("answer_prefix", ExplainerTemplate.answer_prefix)),
        explanation_prefix=str(meta.get("explanation_prefix", "")),
        view=_view(md, meta),
    )

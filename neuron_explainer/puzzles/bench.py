"""The two puzzle benchmarks (docs/method.md, "Puzzles"): scorer and explainer.

- **scorer**: simulate every candidate explanation (the true one, the hand-written near misses and the
  generated top-tokens one) on all of a puzzle's sentences; the true one should rank first.
- **explainer**: explain from the evidence sentences, then judge on the held-out sentences. A puzzle is
  **solved** when the explanation's held-out correlation reaches the true explanation's minus
  `SOLVED_MARGIN` and beats every near miss's, and, where a judge model is configured, the judge does
  not say the two explanations describe different behaviour. With revision, the explainer writes test
  sentences, the puzzle neuron's response to them is the simulator's prediction under the TRUE
  explanation (a synthetic neuron has no weights to run), and a revised explanation is judged the same
  way.

Explainers: an LLM, or a baseline: `top_tokens` (the three most common high-activation tokens of the
evidence) and `lookup` (the tokens with the highest mean activation over the evidence).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from neuron_explainer.datatypes import ActivationRecord, Failure
from neuron_explainer.errors import ConfigError, NeuronExplainerError
from neuron_explainer.explain.explainer import explain
from neuron_explainer.llm.base import BackendError, GenerateParams, LLMBackend, Message
from neuron_explainer.prompts.templates import ExplainerTemplate
from neuron_explainer.puzzles.puzzle import Puzzle, tokenize_marked, top_tokens_explanation
from neuron_explainer.revise import (
    RevisionTemplates,
    TestSentenceError,
    gather_evidence,
    generation_params,
    revise_explanation,
    write_test_sentences,
)
from neuron_explainer.simulate.methods import RecordSimulator

SOLVED_MARGIN = 0.1
BASELINE_EXPLAINERS = ("top_tokens", "lookup")
SENTENCE_TOKENS = 400
"""Completion budget of the explainer's list of test sentences."""


def _rank_key(score: float | None) -> float:
    return float("-inf") if score is None else score


ProgressFn = Callable[[str, int, int], None]


async def scorer_benchmark(
    puzzles: Sequence[Puzzle], sim: RecordSimulator, progress: ProgressFn | None = None
) -> list[dict]:
    """One row per (puzzle, candidate): its score and rank; the true candidate is `is_true`."""
    rows = []
    for done, p in enumerate(puzzles, 1):
        candidates = [(p.explanation, True), *((f, False) for f in p.false_explanations)]
        scored = [(text, true, await sim.score(text, p.records)) for text, true in candidates]
        order = sorted(range(len(scored)), key=lambda i: -_rank_key(scored[i][2]))
        for rank, i in enumerate(order, 1):
            text, true, score = scored[i]
            rows.append(
                {"puzzle": p.id, "theme": p.theme, "candidate": text, "is_true": true, "score": score, "rank": rank}
            )
        if progress:
            progress("scorer", done, len(puzzles))
    return rows


def lookup_explanation(records: Sequence[ActivationRecord], n: int = 3) -> str:
    """Baseline explainer: the tokens with the highest mean activation over the records."""
    sums: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for t, a in zip(r.tokens, r.activations, strict=True):
            sums[t.strip()].append(a)
    means = sorted(((sum(v) / len(v), t) for t, v in sums.items() if t), key=lambda x: (-x[0], x[1]))
    listed = [f'"{t}"' for _, t in means[:n]]
    return "the tokens " + (", ".join(listed[:-1]) + f" and {listed[-1]}" if len(listed) > 1 else listed[0])


async def _judge(judge: LLMBackend, truth: str, candidate: str) -> bool | None:
    messages = [
        Message(
            "system",
            "You compare two descriptions of what a neuron in a language model responds to. Answer yes if they "
            "describe the same behaviour (the same kind of tokens in the same contexts), no otherwise. Answer "
            "with one word.",
        ),
        Message("user", f"Description A: {truth}\nDescription B: {candidate}\nSame behaviour?"),
    ]
    (answer,) = await judge.generate(messages, GenerateParams(max_tokens=3, temperature=0.0))
    word = answer.strip().lower()
    return True if word.startswith("yes") else False if word.startswith("no") else None


@dataclass
class ExplainerSetup:
    """What the explainer benchmark needs beyond the simulator."""

    explainer: str
    """`top_tokens`, `lookup`, or a back-end spec (then `backend` and `template` are set)."""
    backend: LLMBackend | None = None
    template: ExplainerTemplate | None = None
    revision: RevisionTemplates | None = None
    judge: LLMBackend | None = None
    temperature: float = 1.0
    max_tokens: int = 60
    seed: int | None = 0


async def _llm_explain(setup: ExplainerSetup, records: Sequence[ActivationRecord]) -> str | Failure:
    assert setup.backend is not None and setup.template is not None
    (out,) = await explain(
        records, setup.backend, setup.template, n=1, temperature=setup.temperature,
        max_tokens=setup.max_tokens, seed=setup.seed,
    )  # fmt: skip
    return out


async def _revise(setup: ExplainerSetup, sim: RecordSimulator, p: Puzzle, explanation: str) -> str | Failure:
    """One revision round; the puzzle neuron's responses are the simulator's under the true explanation."""
    assert setup.backend is not None and setup.template is not None and setup.revision is not None
    params = generation_params(setup.temperature, setup.max_tokens, setup.seed)

    async def respond(sentence: str) -> ActivationRecord:
        r = tokenize_marked(sentence.replace("{", "(").replace("}", ")"))
        (values,) = await sim(p.explanation, [r])
        return ActivationRecord(tokens=r.tokens, activations=values)

    try:
        sentences = await write_test_sentences(setup.backend, setup.revision, explanation, params, SENTENCE_TOKENS)
        tested = await gather_evidence(sentences, respond)
    except TestSentenceError as e:
        return Failure(stage="revise", kind="parse", message=str(e), raw=e.raw)
    except NeuronExplainerError as e:  # an untokenizable sentence, or a back end that gave up
        return Failure(stage="revise", kind="backend" if isinstance(e, BackendError) else "parse", message=str(e))
    return await revise_explanation(
        setup.backend, setup.revision, setup.template, p.evidence, explanation, tested.split("revision"), params
    )


async def explainer_benchmark(
    puzzles: Sequence[Puzzle],
    sim: RecordSimulator,
    setup: ExplainerSetup,
    revise: bool,
    progress: ProgressFn | None = None,
) -> list[dict]:
    """One row per (puzzle, round): the explanation, its held-out score, the true one's, and the verdicts."""
    rows = []
    for done, p in enumerate(puzzles, 1):
        true_score = await sim.score(p.explanation, p.held_out)
        false_scores = [await sim.score(f, p.held_out) for f in p.false_explanations]
        rounds: list[tuple[str, str | Failure]] = []
        if setup.explainer == "top_tokens":
            try:
                rounds.append(("original", top_tokens_explanation(p.evidence)))
            except ConfigError as e:  # no token of the evidence reaches the high level: nothing to list
                rounds.append(("original", Failure(stage="explain", kind="data", message=str(e))))
        elif setup.explainer == "lookup":
            rounds.append(("original", lookup_explanation(p.evidence)))
        else:
            first = await _llm_explain(setup, p.evidence)
            rounds.append(("original", first))
            if revise and isinstance(first, str):
                rounds.append(("revised", await _revise(setup, sim, p, first)))
        for round_name, result in rounds:
            row = {"puzzle": p.id, "theme": p.theme, "explainer": setup.explainer, "round": round_name,
                   "true_explanation": p.explanation, "true_score": true_score}  # fmt: skip
            if isinstance(result, Failure):
                rows.append({**row, "explanation": None, "score": None, "solved_by_score": False, "judge": None,
                             "solved": False, "failure": result.message})  # fmt: skip
                continue
            score = await sim.score(result, p.held_out)
            by_score = (
                score is not None
                and true_score is not None
                and score >= true_score - SOLVED_MARGIN
                and all(f is None or score > f for f in false_scores)
            )
            verdict = await _judge(setup.judge, p.explanation, result) if setup.judge is not None else None
            solved = by_score and (verdict is not False if setup.judge is not None else True)
            rows.append({**row, "explanation": result, "score": score, "solved_by_score": by_score, "judge": verdict,
                         "solved": solved, "failure": None})  # fmt: skip
        if progress:
            progress(setup.explainer[:24], done, len(puzzles))
    return rows


def summarize(scorer_rows: Sequence[dict], explainer_rows: Sequence[dict]) -> dict:
    """Top-1 / top-2 accuracy of the scorer; solved counts of the explainer per round."""
    true = [r for r in scorer_rows if r["is_true"]]
    out: dict = {
        "puzzles": len(true),
        "scorer_top1": sum(r["rank"] == 1 and r["score"] is not None for r in true),
        "scorer_top2": sum(r["rank"] <= 2 and r["score"] is not None for r in true),
    }
    for name, round_name in dict.fromkeys((r["explainer"], r["round"]) for r in explainer_rows):
        rs = [r for r in explainer_rows if r["explainer"] == name and r["round"] == round_name]
        out[f"solved[{name}, {round_name}]"] = sum(r["solved"] for r in rs)
        out[f"failed[{name}, {round_name}]"] = sum(r["failure"] is not None for r in rs)
    return out


def write_results(out_dir: str, scorer_rows: list[dict], explainer_rows: list[dict], summary: dict, meta: dict) -> None:
    """Results as JSON and Parquet tables, summary.json and a short report.md."""
    import json
    from pathlib import Path

    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("scorer", scorer_rows), ("explainer", explainer_rows)):
        (out / f"{name}.json").write_text(json.dumps(rows, indent=1))
        if rows:
            pd.DataFrame(rows).to_parquet(out / f"{name}.parquet", index=False)
    (out / "summary.json").write_text(json.dumps({**meta, **summary}, indent=1))
    n = summary["puzzles"]
    lines = [
        "# Puzzle benchmark",
        "",
        *(f"- {k}: {v}" for k, v in meta.items()),
        "",
        f"Scorer: the true explanation ranks first in {summary['scorer_top1']} / {n} puzzles and in the top two "
        f"in {summary['scorer_top2']} / {n}.",
        "",
    ]
    for key, value in summary.items():
        if key.startswith("solved["):
            which = key.removeprefix("solved[").removesuffix("]")
            failed = summary.get(f"failed[{which}]", 0)
            lines.append(f"Explainer {which}: {value} / {n} solved ({failed} produced no explanation).")
    lines += ["", "| puzzle | true rank | true score | best false candidate |", "|---|---|---|---|"]
    for p in dict.fromkeys(r["puzzle"] for r in scorer_rows):
        rows = [r for r in scorer_rows if r["puzzle"] == p]
        true = next(r for r in rows if r["is_true"])
        best_false = min((r for r in rows if not r["is_true"]), key=lambda r: r["rank"])
        fmt = "undefined" if true["score"] is None else f"{true['score']:.3f}"
        lines.append(f"| {p} | {true['rank']} | {fmt} | {best_false['candidate']} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")

"""The explainable-direction search: coordinate ascent on a unit direction theta and its explanation.

A direction theta (uniformly random unit vector at the start) defines the virtual neuron
a_theta = a^T Sigma^{-1/2} theta over one layer's MLP activations a. Each round:

1. **view**: a_theta over the candidate pool (pool.py), minus its mean over the pool. Correlation, the
   ranking of excerpts by their maximum and the update step are all unchanged by a constant shift; the
   shift matters only to the explainer, which is shown max(a, 0) on a 0-10 scale: without it, a direction
   whose values are negative everywhere (the activations' mean read through w) would show it nothing.
   A few pool excerpts per direction are reserved at random (seeded); the rest are ranked by their
   maximum a_theta and dealt alternately to the explanation side and the scoring side, so that no excerpt
   is both shown to the explainer and scored. The explainer sees the explanation side's top `n_explain`;
   the scoring set is the scoring side's top `n_score_top` plus `n_score_random` reserved random excerpts.
2. **explanation step**: candidates are fresh explanations of the evidence, a revision (the revision
   prompt, with more of the direction's excerpts) of the best earlier explanation, and the `keep_best`
   best earlier explanations themselves; each is simulated on the scoring set and the one with the
   highest top-and-random correlation is kept.
3. **update step**: Adam on theta, maximising the correlation of a_theta with that fixed simulation on
   the scoring tokens (steps.py); then the explanation is scored afresh on the new theta's own scoring
   set (`score_after`).

A fraction of the pool (`held_out`, half by default) is never used by the rounds: a direction's start and
end are scored there (`held_out_score`), since the round scores are optimistic once an update step has
fitted theta to the scoring excerpts. Every round is written as it ends (results.py), so a killed search
resumes at the next round. The method and its choices are in docs/method.md, "Explainable directions".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from neuron_explainer.directions import results as tables
from neuron_explainer.directions.assistants import Assistants, flat
from neuron_explainer.directions.covariance import StreamingCovariance, Whitener, covariance_path
from neuron_explainer.directions.pool import Pool, build_pool, neurons_needed, update_direction
from neuron_explainer.errors import ConfigError
from neuron_explainer.records.store import RunStore
from neuron_explainer.stages.runtime import Deps

REVISION_TOP = 3
"""Explanation-side excerpts after the evidence shown with their values in the revision prompt ..."""
REVISION_RANDOM = 2
"""... and reserved random ones (where a_theta is mostly low: negative evidence)."""
EXPLAIN_ATTEMPTS = 3
"""Explainer calls (other seeds) when a round would otherwise have no candidate at all."""


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """What one search does. Everything but `n_directions` and `rounds` enters the search id."""

    n_directions: int = 1
    """Directions to find (independent random starts)."""
    rounds: int = 10
    """Rounds of coordinate ascent per direction."""
    layer: int
    """The layer whose MLP activations the directions read."""
    pool_size: int = 1000
    """The first P excerpts of the run form the candidate pool."""
    seed: int = 0
    """Seed of the random starts and reserved random excerpts."""
    whiten: bool = True
    """Directions over whitened activations (a^T Sigma^{-1/2} theta), else raw (a^T theta)."""
    update_steps: int = 50
    """Adam steps per update step."""
    lr: float = 1e-2
    """Adam's learning rate (the paper's 1e-2)."""
    beta1: float = 0.9
    """Adam's first-moment decay (the paper's 0.9)."""
    beta2: float = 0.999
    """Adam's second-moment decay (the paper's 0.999)."""
    n_explain: int = 5
    """Top excerpts shown to the explainer."""
    n_score_top: int = 5
    """Top excerpts scored (and optimised on)."""
    n_score_random: int = 5
    """Random excerpts scored (and optimised on)."""
    keep_best: int = 2
    """Earlier explanations re-scored every round (the previous round's pick always among them)."""
    held_out: float = 0.5
    """Fraction of the pool (seeded) the search never uses: a direction's start and end are scored there."""

    def held_out_size(self, pool_size: int) -> int:
        """Pool excerpts held out."""
        return int(round(self.held_out * pool_size))

    def check(self, pool_size: int) -> None:
        """Raise ConfigError when the pool cannot supply every role disjointly."""
        searched = pool_size - self.held_out_size(pool_size)
        needed = 2 * (self.n_explain + REVISION_TOP) + self.n_score_random + REVISION_RANDOM
        if searched < needed or self.held_out_size(pool_size) < self.n_score_top + self.n_score_random:
            raise ConfigError(
                f"a candidate pool of {pool_size} excerpts is too small: these settings need {needed} in the "
                f"search and {self.n_score_top + self.n_score_random} held out"
            )
        if self.n_directions < 1 or self.rounds < 1 or self.update_steps < 0 or not 0 < self.held_out < 1:
            raise ConfigError("a search needs a direction, a round, no negative step count and 0 < held_out < 1")


@dataclass(frozen=True)
class View:
    """A direction's values over the pool, and the pool excerpts of each role."""

    theta: np.ndarray
    read: np.ndarray
    """The read vector in activation space: a_theta = a^T read."""
    values: np.ndarray
    """(P, T) a_theta over the pool."""
    explain: list[int]
    scoring: list[int]
    revise: list[int]


class DirectionSearch:
    """One search over one pool; `await run()` finds (or resumes) every direction."""

    def __init__(
        self,
        store: RunStore,
        pool: Pool,
        whitener: Whitener,
        assistants: Assistants,
        settings: SearchSettings,
        notify: Callable[[str], None] = print,
    ) -> None:
        settings.check(len(pool))
        if whitener.dim != pool.width:
            raise ConfigError(f"the covariance has width {whitener.dim}, the layer's MLP {pool.width}")
        self.store, self.pool, self.whitener, self.assistants = store, pool, whitener, assistants
        self.settings, self.notify = settings, notify
        identity = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("n_directions", "rounds")} | {
            "assistants": assistants.identity(),
            "pool": [len(pool), pool.excerpt_ids[0]],
        }
        self.search_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
        order = np.random.default_rng([settings.seed, settings.layer, 2]).permutation(len(pool))
        cut = settings.held_out_size(len(pool))
        self.held = sorted(int(i) for i in order[:cut])
        """Pool positions held out of the search."""
        self.searched = sorted(int(i) for i in order[cut:])
        """Pool positions the search explains, scores and optimises on."""

    def reserved(self, k: int) -> list[int]:
        """Pool positions reserved for direction k's random excerpts (scoring first, then revision)."""
        s = self.settings
        rng = np.random.default_rng([s.seed, s.layer, k, 0])
        return [int(i) for i in rng.choice(self.searched, s.n_score_random + REVISION_RANDOM, replace=False)]

    def start(self, k: int) -> np.ndarray:
        """Direction k's uniformly random unit starting vector."""
        s = self.settings
        theta = np.random.default_rng([s.seed, s.layer, k, 1]).standard_normal(self.pool.width)
        return theta / np.linalg.norm(theta)

    def values(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(read vector, a_theta over the pool minus its mean): see the module docstring, step 1."""
        read = self.whitener.read_vectors(theta[None])[0]
        values = self.pool.values(read)
        return read, values - values.mean()

    @staticmethod
    def ranked(values: np.ndarray, among: list[int], taken: set[int]) -> list[int]:
        """Pool positions `among`, not `taken`, by their largest value, highest first (ties: lower first)."""
        top = np.asarray(among)[np.argsort(-values[among].max(1), kind="stable")]
        return [int(i) for i in top if int(i) not in taken]

    def view(self, k: int, theta: np.ndarray) -> View:
        """a_theta over the pool and the excerpts each role gets (module docstring, step 1)."""
        s, reserved = self.settings, self.reserved(k)
        read, values = self.values(theta)
        ranked = self.ranked(values, self.searched, set(reserved))
        explain_side, score_side = ranked[0::2], ranked[1::2]
        return View(
            theta,
            read,
            values,
            explain_side[: s.n_explain],
            score_side[: s.n_score_top] + reserved[: s.n_score_random],
            explain_side[s.n_explain : s.n_explain + REVISION_TOP] + reserved[s.n_score_random :],
        )

    def explain_seed(self, k: int, r: int, attempt: int) -> int | None:
        """The explainer's sampling seed for one call (None when the config sets none)."""
        base = self.assistants.explain_cfg.seed
        return None if base is None else base + 1009 * k + r + 100_003 * attempt

    async def candidates(self, k: int, r: int, view: View, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(explanation, source) pairs to score this round, without repeats (module docstring, step 2)."""
        evidence = self.pool.records(view.explain, view.values)
        earlier = tables.best_earlier(rows, self.settings.keep_best)
        fresh: list[str] = []
        for attempt in range(1 if earlier else EXPLAIN_ATTEMPTS):
            fresh = await self.assistants.explain(evidence, self.explain_seed(k, r, attempt))
            if fresh:
                break
        out = [(text, "explain") for text in fresh]
        if earlier:
            shown = self.pool.records(view.revise, view.values)
            revised = await self.assistants.revise(evidence, earlier[0], shown)
            out += [(revised, "revise")] if revised else []
        out += [(text, "earlier") for text in earlier]
        first: dict[str, str] = {}
        for text, src in out:
            first.setdefault(text, src)  # a repeated explanation keeps its first source
        return list(first.items())

    async def round(self, k: int, r: int, theta: np.ndarray, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """One round of direction k from theta: its `direction_rounds` row."""
        s, view = self.settings, self.view(k, theta)
        pairs = await self.candidates(k, r, view, rows)
        scored = await self.assistants.score([t for t, _ in pairs], self.pool.records(view.scoring, view.values))
        scores = [scored[t][0] for t, _ in pairs]
        defined = [i for i, score in enumerate(scores) if score is not None]
        row: dict[str, Any] = {
            "search_id": self.search_id, "layer": s.layer, "direction": k, "round": r,
            "theta_before": theta.tolist(), "theta_after": theta.tolist(), "explanation": None,
            "explanation_source": None, "score_before": None, "fit_after": None, "score_after": None,
            "candidates": [t for t, _ in pairs], "candidate_sources": [src for _, src in pairs],
            "candidate_scores": [float("nan") if x is None else x for x in scores],
            "explain_excerpts": [self.pool.excerpt_ids[i] for i in view.explain],
            "scoring_excerpts": [self.pool.excerpt_ids[i] for i in view.scoring],
        }  # fmt: skip
        if not defined:  # nothing scored (no explanation, or constant simulations): theta stays, next round retries
            return row
        best = max(defined, key=lambda i: (scores[i], -i))
        text, simulation = pairs[best][0], scored[pairs[best][0]][1]
        assert simulation is not None
        whitened = self.pool.token_rows(view.scoring) @ self.whitener.inverse_sqrt
        after, fit = update_direction(
            whitened, flat(simulation), theta, steps=s.update_steps, lr=s.lr, betas=(s.beta1, s.beta2)
        )
        new = self.view(k, after)
        score_after, _ = (await self.assistants.score([text], self.pool.records(new.scoring, new.values)))[text]
        row.update(theta_after=after.tolist(), explanation=text, explanation_source=pairs[best][1],
                   score_before=scores[best], fit_after=fit, score_after=score_after)  # fmt: skip
        return row

    async def held_out_score(self, k: int, theta: np.ndarray, text: str | None) -> tuple[float | None, int | None]:
        """(top-and-random score, neurons needed for 90 % of it) of an explanation of theta, on held-out excerpts.

        The excerpts were never shown to the explainer nor fitted by an update step: the top `n_score_top`
        held-out excerpts by theta's values and `n_score_random` held-out random ones (seeded per direction).
        """
        if text is None:
            return None, None
        s = self.settings
        read, values = self.values(theta)
        rng = np.random.default_rng([s.seed, s.layer, k, 3])
        random = [int(i) for i in rng.choice(self.held, s.n_score_random, replace=False)]
        picked = self.ranked(values, self.held, set(random))[: s.n_score_top] + random
        score, simulation = (await self.assistants.score([text], self.pool.records(picked, values)))[text]
        if simulation is None or not (score or 0) > 0:
            return score, None
        return score, neurons_needed(self.pool.token_rows(picked), read, flat(simulation))

    async def finish(self, k: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Direction k's `direction_results` row from its rounds."""
        first, last, theta = rows[0], rows[-1], np.asarray(rows[-1]["theta_after"])
        start, _ = await self.held_out_score(k, np.asarray(first["theta_before"]), first["explanation"])
        final, needed = await self.held_out_score(k, theta, last["explanation"])
        return {
            "search_id": self.search_id, "layer": self.settings.layer, "direction": k,
            "rounds": self.settings.rounds, "whitened": self.settings.whiten, "theta": theta.tolist(),
            "explanation": last["explanation"], "score_start": start, "score_final": final,
            "search_score_start": first["score_before"], "search_score_final": last["score_after"],
            "neurons_for_90": needed, "n_neurons": self.pool.width,
            "settings": json.dumps(dataclasses.asdict(self.settings), sort_keys=True),
        }  # fmt: skip

    async def direction(self, k: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Run (or resume) direction k's remaining rounds; its results row."""
        theta = np.asarray(rows[-1]["theta_after"]) if rows else self.start(k)
        for r in range(len(rows), self.settings.rounds):
            row = await self.round(k, r, theta, rows)
            tables.write_rows(self.store, "direction_rounds", [row])
            rows.append(row)
            theta = np.asarray(row["theta_after"])
            self.notify(describe_round(row))
        result = await self.finish(k, rows)
        tables.write_rows(self.store, "direction_results", [result])
        return result

    async def run(self) -> pd.DataFrame:
        """Find every direction not yet found by this search; the summary of all of them (results.summary)."""
        s = self.settings
        done = {
            int(r["direction"]): r
            for r in tables.read_rows(self.store, "direction_results", self.search_id)
            if r["rounds"] == s.rounds
        }
        rounds = tables.rounds_by_direction(tables.read_rows(self.store, "direction_rounds", self.search_id), s.rounds)
        for k in range(s.n_directions):
            if k not in done:
                done[k] = await self.direction(k, rounds.get(k, []))
        found = [done[k] for k in range(s.n_directions)]
        tables.finish_search(self.store, self.search_id, s.layer, found, self.whitener, s.whiten)
        return tables.summary(found)


def describe_round(row: dict[str, Any]) -> str:
    """One status line about a finished round."""

    def fmt(x: float | None) -> str:
        return "undefined" if x is None else f"{x:.3f}"

    head = f"direction {row['direction']} round {row['round']}:"
    if row["explanation"] is None:
        return f"{head} no candidate explanation could be scored; the direction is kept"
    return (
        f"{head} {fmt(row['score_before'])} -> {fmt(row['score_after'])} "
        f"(fit {fmt(row['fit_after'])}) {row['explanation']!r} [{row['explanation_source']}]"
    )


def load_whitener(store: RunStore, layer: int, whiten: bool, width: int) -> Whitener:
    """The run's harvested covariance of `layer` as a whitener (the identity when not whitening).

    Raises:
        ConfigError: whitening without a covariance file for the layer.
    """
    if not whiten:
        return Whitener.identity(width)
    path = covariance_path(store.root, layer)
    if not path.exists():
        raise ConfigError(
            f"{store.root} has no covariance of layer {layer}: harvest with harvest.covariance_layers including "
            f"{layer} (or search raw directions with whiten off)"
        )
    return Whitener.from_covariance(StreamingCovariance.read(path)[1].covariance())


async def search_directions(
    store: RunStore, deps: Deps, settings: SearchSettings, *, pool: Pool | None = None, whitener: Whitener | None = None
) -> tuple[str, pd.DataFrame]:
    """Find (or resume) `settings.n_directions` explainable directions; (search id, summary per direction).

    The pool is built from the run's excerpts with its subject model, and the whitener from its harvested
    covariance, unless given (tests plant their own).

    Raises:
        ConfigError: a missing covariance, a pool too small for the settings, or unusable back ends.
    """
    store.require_harvest()
    assistants = Assistants.from_deps(deps)
    if pool is None:
        deps.notify(f"building the candidate pool: layer {settings.layer}, {settings.pool_size} excerpts ...")
        pool = build_pool(store, deps.subject(store), settings.layer, settings.pool_size)
    whitener = whitener or load_whitener(store, settings.layer, settings.whiten, pool.width)
    search = DirectionSearch(store, pool, whitener, assistants, settings, deps.notify)
    return search.search_id, await search.run()

"""The whole pipeline on a tiny model with fake back ends equals frames saved before the restructure.

Harvest, explain, simulate, revise, baselines, score and ablate run on a tiny random GPT-2; every table
they write is compared with `tests/data/regression/*.parquet`, which were written by the code as it
stood before the package was reshaped (commit "Regression frames ..."). Rewrite them only on purpose,
with `pytest tests/integration/test_regression.py --update-regression`, and say why in the commit.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.records.store import RunStore

FRAMES = Path(__file__).parent.parent / "data" / "regression"
EXPLAINED = [(0, 1), (0, 2), (1, 5), (1, 7)]
BASELINED = [(0, 1), (1, 5)]
SENTENCES = " the cat sat on the red house\n2. a dog ran under the tree\n3. the king reads a book\n4. one two three"


class PromptKeyedFake(FakeBackend):
    """A fake whose answer depends on the prompt, not on call order (so scheduling cannot change results)."""

    async def generate(self, messages, params):
        self.calls.append(("generate", (tuple(messages), params)))
        text = "\n".join(m.content for m in messages)
        if "Write ten different sentences" in messages[0].content:
            return [SENTENCES] * params.n
        if _digest(text) % 6 == 0:
            return ["\n\n"] * params.n  # unusable: a typed failure
        return [f" tokens of kind {_digest(text) % 97} and their neighbours."] * params.n


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def explanation_oracle(prompt: str, tokens: list[tuple[str, int]], i: int) -> tuple[tuple[str, float], ...]:
    """After a tab: a level from a hash of (the nearest preceding explanation, the row's token)."""
    if tokens[i][0] != "\t" or i == 0:
        return (("x", 0.0),)
    before = prompt[: tokens[i][1]]
    explanation = before.rsplit("Explanation: ", 1)[-1].split("\n", 1)[0]
    level = _digest(explanation + tokens[i - 1][0]) % 11
    return ((str(level), -0.3), (str((level + 4) % 11), -1.5))


def run_everything(model_dir: Path, corpus: Path, out: Path) -> RunStore:
    """Every stage, called as a library user would (this is the only part that follows the API)."""
    from neuron_explainer.config import (
        AblateConfig,
        BaselinesConfig,
        CorpusConfig,
        ExplainConfig,
        HarvestConfig,
        LLMConfig,
        RunConfig,
        SimulateConfig,
    )
    from neuron_explainer.stages import Deps, stage_module

    cfg = RunConfig(
        out=str(out),
        harvest=HarvestConfig(
            model=str(model_dir), corpus=CorpusConfig(source=str(corpus)), n_excerpts=60, excerpt_len=16, top_k=24,
            random_k=9, quantile_k=2, quantile_pilot_excerpts=20, batch_size=8, record_dtype="float32", seed=5,
        ),
        neurons=",".join(f"{layer}:{n}" for layer, n in EXPLAINED),
        explain=ExplainConfig(explainer="test:explainer", n_samples=2),
        simulate=SimulateConfig(simulator="test:simulator", max_level=10),
        baselines=BaselinesConfig(held_out_excerpts=30),
        ablate=AblateConfig(batch_rows=5, max_excerpts=10),
        llm=LLMConfig(cache=False),
    )  # fmt: skip
    backends = {"test:explainer": PromptKeyedFake(supports_prefill=True),
                "test:simulator": FakeBackend(oracle=explanation_oracle)}  # fmt: skip
    deps = Deps.from_config(cfg, backends=backends)
    store = RunStore(out)
    for name in ("harvest", "explain", "simulate", "revise", "baselines", "score", "ablate"):
        stage_cfg = cfg
        if name == "baselines":
            stage_cfg = cfg.model_copy(update={"neurons": ",".join(f"{layer}:{n}" for layer, n in BASELINED)})
        deps.config = stage_cfg
        asyncio.run(stage_module(name).run(store, getattr(stage_cfg, name), deps))
    return store


KEYS = {
    "excerpts": ["excerpt_id"],
    "records": ["layer", "neuron", "kind", "bucket", "rank"],
    "neuron_stats": ["layer", "neuron"],
    "explanations": ["explanation_id"],
    "simulations": ["explanation_id", "simulator", "split", "record_kind", "excerpt_id"],
    "scores": ["explanation_id", "simulator", "scorer"],
    "ablation_scores": ["explanation_id", "simulator", "scorer"],
    "revision_sentences": ["explanation_id", "sentence_idx"],
    "revision_scores": ["original_explanation_id", "arm", "scorer"],
    "failures": ["stage", "layer", "neuron", "explanation_id", "kind", "message"],
}


def _read_dir(path: Path) -> pd.DataFrame:
    import pyarrow.dataset as ds

    files = sorted(str(p) for p in path.glob("*.parquet"))
    if not files:
        return pd.DataFrame()
    return ds.dataset(files, format="parquet").to_table().to_pandas()


def _as_tuple(v: object) -> tuple | None:
    return None if v is None else tuple(x if isinstance(x, str) else float(x) for x in v)  # type: ignore[union-attr]


def normalize(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Sorted by the table's key; list cells as tuples of floats; the records of the explained neurons only."""
    if name == "records":
        df = df[[(a, b) in set(EXPLAINED) for a, b in zip(df.layer, df.neuron, strict=True)]]
        df = df.assign(kind=df.kind.astype(str))
    df = df.copy()
    for col in df.columns:
        first = next((v for v in df[col] if v is not None), None)
        if df[col].dtype == object and first is not None and not isinstance(first, str):
            df[col] = df[col].map(_as_tuple)
    return df.sort_values(KEYS[name], na_position="first").reset_index(drop=True)


def canonical_tables(store: RunStore) -> dict[str, pd.DataFrame]:
    """Every table of the run, normalized."""
    tables = {name: _read_dir(store.root / name) for name in KEYS}
    empty = [name for name, df in tables.items() if df.empty]
    assert not empty, f"the run wrote no {empty}: it must exercise every stage"
    return {name: normalize(name, df) for name, df in tables.items()}


def _lists_close(a: pd.Series, b: pd.Series) -> bool:
    import numpy as np

    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and not np.allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-5, atol=1e-6,
                                             equal_nan=True):  # fmt: skip
            return False
    return True


def assert_tables_equal(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    for name, expected in want.items():
        actual = got[name]
        # columns added since the frames were saved are new results, not changed ones
        assert [c for c in actual.columns if c in set(expected.columns)] == list(expected.columns), name
        assert len(actual) == len(expected), f"{name}: {len(actual)} rows, expected {len(expected)}"
        for col in expected.columns:
            a, e = actual[col], expected[col]
            first = next((v for v in e if v is not None), None)
            if isinstance(first, tuple) and first and isinstance(first[0], str):
                assert list(a) == list(e), f"{name}.{col} differs"
            elif isinstance(first, tuple):
                assert _lists_close(a, e), f"{name}.{col} differs"
            elif pd.api.types.is_float_dtype(e):
                pd.testing.assert_series_equal(a, e, check_exact=False, rtol=1e-5, atol=1e-6, obj=f"{name}.{col}")
            else:
                pd.testing.assert_series_equal(a, e, check_dtype=False, obj=f"{name}.{col}")


def test_whole_pipeline_equals_the_saved_frames(tiny_model_dirs, corpus_file, tmp_path, request) -> None:
    store = run_everything(tiny_model_dirs["gpt2"], corpus_file, tmp_path / "run")
    got = canonical_tables(store)
    # the run must exercise every stage, or the comparison proves little
    assert all(len(df) for df in got.values()), {k: len(v) for k, v in got.items()}
    assert set(got["failures"].stage) >= {"explain"}
    if request.config.getoption("--update-regression"):
        FRAMES.mkdir(parents=True, exist_ok=True)
        for name, df in got.items():
            df.to_parquet(FRAMES / f"{name}.parquet", index=False, compression="zstd")
        pytest.skip("regression frames rewritten")
    want = {name: normalize(name, pd.read_parquet(FRAMES / f"{name}.parquet")) for name in KEYS}
    assert_tables_equal(got, want)

"""Viewer benchmark at whole-model scale: a synthetic GPT-2 XL-shaped run (48 layers x 6,400 neurons).

The run is written directly as Parquet in the run-directory layout (small records: 5 top, 5 random and
1 per quantile bucket, excerpts of 24 tokens; one explanation with two scores per neuron; simulations
only for the neurons that get a page). Measured in this one run:
  - the build of the full index (307,200 rows) with no neuron page, then with a sample of pages:
    time, files, bytes; per-page time (SiteReport.pages_seconds / pages) and size, and the whole-model
    figures extrapolated from them (labelled extrapolated);
  - Chromium (system /usr/bin/chromium, file://, network aborted): time to show the first rows, time
    until all layer files are loaded, and the time of one search and one sort over all rows;
  - the time Chromium takes to open and draw one neuron page.

    python benchmarks/view.py                                   # 48 x 6400, 2,000 pages
    python benchmarks/view.py --layers 2 --neurons 500 --pages 50   # a quick check
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neuron_explainer.records import schema as S

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or has had "
    "city river music year war team film church school family game season album party county village"
).split()
TOPICS = "numbers names dates places verbs plurals punctuation capitals code brackets quotes years units".split()
EXCERPT_LEN, N_EXCERPTS, TOP, RND, QUANT = 24, 20_000, 5, 5, 1


def list_array(flat: np.ndarray, n_rows: int, width: int, dtype: pa.DataType) -> pa.ListArray:
    offsets = pa.array(np.arange(0, (n_rows + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1), type=dtype))


def write_excerpts(run: Path, rng: np.random.Generator) -> None:
    ids = rng.integers(0, len(WORDS), size=(N_EXCERPTS, EXCERPT_LEN))
    tokens = [[" " + WORDS[i] for i in row] for row in ids.tolist()]
    table = pa.table(
        {
            "excerpt_id": pa.array(np.arange(N_EXCERPTS, dtype=np.int32)),
            "doc_index": pa.array(np.arange(N_EXCERPTS, dtype=np.int64)),
            "token_start": pa.array(np.zeros(N_EXCERPTS, dtype=np.int32)),
            "token_ids": list_array(ids.astype(np.int32), N_EXCERPTS, EXCERPT_LEN, pa.int32()),
            "tokens": pa.array(tokens, type=pa.list_(pa.string())),
        },
        schema=S.EXCERPTS,
    )
    (run / "excerpts").mkdir(parents=True)
    pq.write_table(table, run / "excerpts" / "part-000000000.parquet")


def write_layer(run: Path, layer: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Write the records and neuron_stats of one layer (per neuron TOP + RND + 5 * QUANT rows).

    Returns the excerpt id of each neuron's third top record (the valid one that simulations use).
    """
    per = TOP + RND + 5 * QUANT
    rows = n * per
    neuron = np.repeat(np.arange(n, dtype=np.int32), per)
    kinds = np.tile(np.array([0] * TOP + [1] * RND + [2] * (5 * QUANT), dtype=np.int8), n)
    bucket = np.tile(np.array([-1] * (TOP + RND) + [b for b in range(5) for _ in range(QUANT)]), n)
    rank = np.tile(np.array(list(range(TOP)) + list(range(RND)) + [0] * (5 * QUANT), dtype=np.int16), n)
    acts = rng.normal(0.0, 0.3, size=(rows, EXCERPT_LEN)).astype(np.float32)
    spike = rng.integers(0, EXCERPT_LEN, size=rows)
    acts[np.arange(rows), spike] += np.where(kinds == 0, 4.0 - 0.3 * rank, 1.0).astype(np.float32)
    acts = acts.astype(np.float16)
    excerpt = rng.integers(0, N_EXCERPTS, size=rows).astype(np.int32)
    excerpt[kinds == 1] = np.tile(np.arange(RND, dtype=np.int32), n)  # the same random excerpts for all
    kind_arr = pa.DictionaryArray.from_arrays(pa.array(kinds), pa.array(["top", "random", "quantile"]))
    records = pa.table(
        {
            "layer": pa.array(np.full(rows, layer, dtype=np.int16)),
            "neuron": pa.array(neuron),
            "kind": kind_arr,
            "bucket": pa.array(np.where(bucket < 0, None, bucket).tolist(), type=pa.int8()),
            "rank": pa.array(rank),
            "excerpt_id": pa.array(excerpt),
            "max_activation": pa.array(acts.max(axis=1).astype(np.float32)),
            "activations": list_array(acts, rows, EXCERPT_LEN, pa.float16()),
        },
        schema=S.records_schema(pa.float16()),
    )
    pq.write_table(records, run / "records" / f"layer-{layer:03d}.parquet", compression="zstd")
    amax = acts.reshape(n, per, EXCERPT_LEN).max(axis=(1, 2)).astype(np.float64)
    amin = acts.reshape(n, per, EXCERPT_LEN).min(axis=(1, 2)).astype(np.float64)
    bounds = np.sort(rng.uniform(0.2, 1.0, size=(n, 4)), axis=1) * amax[:, None]
    stats = {
        "layer": np.full(n, layer, dtype=np.int16),
        "neuron": np.arange(n, dtype=np.int32),
        "count": np.full(n, 10**7, dtype=np.int64),
        "mean": rng.normal(0, 0.02, n),
        "variance": rng.uniform(0.01, 0.1, n),
        "skewness": rng.normal(0, 1, n),
        "kurtosis": rng.uniform(0, 50, n),
        "min_activation": amin,
        "max_activation": amax,
    }
    density = rng.uniform(0.0, 0.5, n)  # as a harvest writes them (older runs lack both: the index estimates)
    stats["positive_count"] = np.round(density * 10**7).astype(np.int64)
    stats["density"] = stats["positive_count"] / 10**7
    table = pa.table({k: pa.array(v) for k, v in stats.items()})
    table = table.append_column("quantile_boundaries", pa.FixedSizeListArray.from_arrays(pa.array(bounds.ravel()), 4))
    for m in ("m2", "m3", "m4"):
        table = table.append_column(m, pa.array(np.zeros(n)))
    path = run / "neuron_stats" / f"layer-{layer:03d}.parquet"
    pq.write_table(table.select(S.NEURON_STATS.names).cast(S.NEURON_STATS), path)
    return excerpt[np.arange(n) * per + 2]


def write_stage_tables(
    run: Path, layers: int, n: int, pages: list[tuple[int, int]], top_valid: list[np.ndarray], rng: np.random.Generator
) -> None:
    """One explanation per neuron, its two correlation scores; simulations for the page sample only."""
    total = layers * n
    layer = np.repeat(np.arange(layers, dtype=np.int16), n)
    neuron = np.tile(np.arange(n, dtype=np.int32), layers)
    eid = [f"{i:016x}" for i in range(total)]
    text = [f"{TOPICS[i % len(TOPICS)]} near '{WORDS[(i * 7) % len(WORDS)]}' and {WORDS[i % 31]}" for i in range(total)]
    const = lambda v: pa.array([v] * total)  # noqa: E731
    expl = pa.table(
        {"layer": layer, "neuron": neuron, "explanation_id": eid, "explanation": text,
         "explainer": const("local:synthetic"), "prompt_version": const("explainer/v1"),
         "view": const("current_token"), "sample_idx": np.zeros(total, np.int16), "round": np.ones(total, np.int16),
         "params_hash": const("0")},
    ).cast(S.EXPLANATIONS)  # fmt: skip
    for name in ("explanations", "scores", "simulations"):
        (run / name).mkdir()
    pq.write_table(expl, run / "explanations" / "part-0.parquet")
    corr = np.clip(rng.normal(0.3, 0.25, size=(2, total)), -1, 1)
    scores = pa.table(
        {"layer": np.tile(layer, 2), "neuron": np.tile(neuron, 2), "explanation_id": eid * 2,
         "scorer": ["top_and_random"] * total + ["random_only"] * total, "correlation": corr.ravel(),
         "explained_variance": corr.ravel() ** 2, "undefined_reason": pa.nulls(2 * total, pa.string()),
         "n_tokens": np.full(2 * total, 240, np.int32),
         "per_excerpt": list_array(rng.uniform(-1, 1, (2 * total, 10)), 2 * total, 10, pa.float64()),
         "simulator": ["local:synthetic"] * (2 * total)},
    ).cast(S.SCORES)  # fmt: skip
    pq.write_table(scores, run / "scores" / "part-0.parquet")
    sim_rows = []
    for lay, neu in pages:  # valid split: top rank 2, random ranks 1 and 4 (records/splits.py)
        for kind, rank in (("top", 2), ("random", 1), ("random", 4)):
            sim_rows.append(dict(layer=lay, neuron=neu, explanation_id=eid[lay * n + neu], split="valid",
                                 record_kind=kind, excerpt_id=rank if kind == "random" else int(top_valid[lay][neu]),
                                 expected_values=rng.uniform(0, 10, EXCERPT_LEN).tolist(), max_level=10,
                                 simulator="local:synthetic", prompt_version="simulator/v1",
                                 calibration_slope=0.3, calibration_intercept=0.0, calibration_error=None))  # fmt: skip
    if sim_rows:
        pq.write_table(pa.Table.from_pylist(sim_rows, schema=S.SIMULATIONS), run / "simulations" / "part-0.parquet")


def make_run(run: Path, layers: int, n: int, pages: list[tuple[int, int]]) -> float:
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    (run / "records").mkdir(parents=True)
    (run / "neuron_stats").mkdir()
    write_excerpts(run, rng)
    top_valid = [write_layer(run, layer, n, rng) for layer in range(layers)]
    write_stage_tables(run, layers, n, pages, top_valid, rng)
    manifest = {
        "schema_version": S.SCHEMA_VERSION,
        "status": {"harvest": "complete"},
        "harvest": {"layers": list(range(layers)), "n_neurons": n, "model": {"spec": "synthetic (GPT-2 XL shape)"},
                    "excerpt_len": EXCERPT_LEN},
    }  # fmt: skip
    (run / "manifest.json").write_text(json.dumps(manifest))
    return time.perf_counter() - started


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]  # fmt: skip


def browse(site: Path, page_path: Path, total: int, chromium: str) -> dict[str, float]:
    """Open the index and one neuron page in Chromium from file:// with every other request aborted."""
    from playwright.sync_api import sync_playwright

    out: dict[str, float] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
        started = time.perf_counter()
        page.goto((site / "index.html").as_uri())
        page.wait_for_function("() => document.querySelectorAll('#nx-index tbody tr').length > 0", timeout=600_000)
        out["index_first_rows_s"] = time.perf_counter() - started
        done = (
            "() => (t => t.includes(' of ') && !t.includes('loading'))"
            "(document.getElementById('nx-status').textContent)"
        )
        page.wait_for_function(done, timeout=600_000)
        out["index_all_layers_s"] = time.perf_counter() - started
        out["index_js_heap_mb"] = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize / 1e6 : -1")
        timed = """(q) => { document.getElementById('nx-search').value = q;
            const t0 = performance.now(); NX.indexRefresh(); const t1 = performance.now();
            return [t1 - t0, document.querySelectorAll('#nx-index tbody tr').length,
                    document.getElementById('nx-status').textContent]; }"""
        ms, rows, status = page.evaluate(timed, "capitals near")
        out["search_ms"], out["search_status"] = ms, status
        ms2, _, _ = page.evaluate(timed, "")
        out["clear_search_ms"] = ms2
        sort = """() => { const t0 = performance.now(); document.querySelector('th[data-col=max]').click();
            return performance.now() - t0; }"""
        out["sort_max_ms"] = page.evaluate(sort)
        started = time.perf_counter()
        page.goto(page_path.as_uri())
        page.wait_for_function("() => document.querySelectorAll('.nx-tok').length > 0")
        out["neuron_page_s"] = time.perf_counter() - started
        out["neuron_page_spans"] = page.locator(".nx-tok").count()
        out["page_errors"] = len(errors)
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--neurons", type=int, default=6400)
    parser.add_argument("--pages", type=int, default=2000, help="neuron pages to build")
    parser.add_argument(
        "--spread",
        action="store_true",
        help="pages for a uniform sample over all layers (per-layer reads then weigh on each page) instead of "
        "the first neurons in layer order (what a whole-model build pays per page)",
    )
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--keep", action="store_true", help="keep the run and sites")
    parser.add_argument("--reuse-run", action="store_true", help="reuse the synthetic run already in --out")
    args = parser.parse_args()
    from neuron_explainer.view import build_site

    work = args.out or Path(tempfile.mkdtemp(prefix="nxview-"))
    total = args.layers * args.neurons
    rng = random.Random(0)
    every = [(a, b) for a in range(args.layers) for b in range(args.neurons)]
    sample = sorted(rng.sample(every, args.pages)) if args.spread else every[: args.pages]
    result: dict[str, object] = {"layers": args.layers, "neurons_per_layer": args.neurons, "neurons": total}
    result["page_sample"] = "uniform over all layers" if args.spread else f"first {args.pages} neurons in layer order"
    if args.reuse_run and (work / "run" / "manifest.json").exists():
        shutil.rmtree(work / "index-only", ignore_errors=True)
        shutil.rmtree(work / "site", ignore_errors=True)
    else:
        result["generate_run_s"] = make_run(work / "run", args.layers, args.neurons, sample)
    result["run_bytes"] = folder_bytes(work / "run")
    index_only = build_site(work / "run", work / "index-only", pages=[])
    result["index_build_s"] = index_only.seconds
    result["index_files"] = index_only.n_files
    result["index_bytes"] = index_only.total_bytes
    result["index_layer_file_bytes_mean"] = folder_bytes(work / "index-only" / "index") / args.layers
    with_pages = build_site(work / "run", work / "site", pages=sample)
    result["pages_built"] = with_pages.n_pages
    result["build_with_pages_s"] = with_pages.seconds
    per_page = with_pages.pages_seconds / max(1, with_pages.n_pages)
    result["per_page_s"] = per_page
    result["page_bytes_mean"] = float(np.mean(with_pages.page_bytes))
    result["page_bytes_max"] = int(np.max(with_pages.page_bytes))
    result["site_bytes"] = with_pages.total_bytes
    result["extrapolated_all_pages_s"] = index_only.seconds + per_page * total
    result["extrapolated_all_pages_bytes"] = index_only.total_bytes + result["page_bytes_mean"] * total
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if Path(args.chromium).exists():
        first = work / "site" / "neurons" / str(sample[0][0]) / f"{sample[0][1]}.html"
        result.update(browse(work / "site", first, total, args.chromium))
    print(json.dumps(result, indent=1))
    if not args.keep and args.out is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

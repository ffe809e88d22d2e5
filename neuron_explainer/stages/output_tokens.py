"""The output_tokens stage: the tokens each selected neuron's output weights promote and suppress.

Computed once from the subject model's weights, with no corpus: the neuron's output weight vector,
scaled by the final norm's gain and projected through the unembedding (inspect/output_tokens.py says
exactly how). One row per (neuron, sign, rank) in the `output_tokens` table; resumable per neuron.
The viewer shows them on each neuron's page.
"""

from __future__ import annotations

from neuron_explainer.config.sections import OutputTokensConfig
from neuron_explainer.errors import ConfigError
from neuron_explainer.records.store import RunStore
from neuron_explainer.records.tables import read_table
from neuron_explainer.stages.runtime import Deps, StageReport
from neuron_explainer.stages.units import PartWriter, UnitQueue, UnitResult, run_batches


def same_layer(batch: list[tuple[int, int]], unit: tuple[int, int]) -> bool:
    """Whether a unit joins a batch: output tokens are computed a layer at a time."""
    return unit[0] == batch[0][0]


async def run(store: RunStore, cfg: OutputTokensConfig, deps: Deps) -> StageReport:
    """Output tokens of every selected neuron not yet done (k on each side), a layer at a time.

    Raises:
        ConfigError: no neurons are selected, or the features are not MLP neurons.
        ModelError: the subject model's family has no known unembedding path.
    """
    from neuron_explainer.inspect.output_tokens import neuron_output_tokens

    neurons = deps.require_selected(store)
    report = StageReport("output_tokens")
    with deps.claims(store, "output_tokens") as claims:  # registered before reading what is done
        done = read_table(store, "output_tokens")
        done_keys = set(zip(done.layer, done.neuron, strict=True))
        units = sorted(dict.fromkeys(neurons))
        todo = [u for u in units if u not in done_keys]
        report.planned, report.skipped_done = len(units), len(units) - len(todo)
        if not todo:
            return report
        subject = deps.subject(store)
        if subject.source.kind != "mlp":
            raise ConfigError(f"output tokens are computed for MLP neurons; these features are {subject.source.kind}")

        def work(batch: list[tuple[int, int]]) -> list[UnitResult]:
            layer = batch[0][0]
            found = neuron_output_tokens(subject.model, subject.tokenizer, layer, [n for _, n in batch], k=cfg.k)
            rows = found.to_frame().to_dict("records")
            return [UnitResult({"output_tokens": [r for r in rows if r["neuron"] == n]}) for _, n in batch]

        queue = UnitQueue(todo, lambda u: u, claims, report)
        writer = PartWriter(store, "output_tokens")
        await run_batches(
            queue, work, report=report, writer=writer, size=len(todo), fits=same_layer, progress=deps.progress
        )
    return report

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
from neuron_explainer.records.tables import read_table, write_part
from neuron_explainer.selection import SPEC_HELP
from neuron_explainer.stages.runtime import Deps, StageReport


async def run(store: RunStore, cfg: OutputTokensConfig, deps: Deps) -> StageReport:
    """Output tokens of every selected neuron not yet done (k on each side).

    Raises:
        ConfigError: no neurons are selected.
        ModelError: the subject model's family has no known unembedding path.
    """
    from neuron_explainer.inspect.output_tokens import neuron_output_tokens

    neurons = deps.selected(store)
    if not neurons:
        raise ConfigError(f"no neurons selected: pass --neurons ({SPEC_HELP}) or set `neurons` in the config")
    done = read_table(store, "output_tokens")
    done_keys = set(zip(done.layer, done.neuron, strict=True))
    todo: dict[int, list[int]] = {}
    for layer, neuron in neurons:
        if (layer, neuron) not in done_keys:
            todo.setdefault(layer, []).append(neuron)
    report = StageReport(
        "output_tokens", planned=len(neurons), skipped_done=len(neurons) - sum(map(len, todo.values()))
    )
    if not todo:
        return report
    subject = deps.subject(store)
    if subject.source.kind != "mlp":
        raise ConfigError(f"output tokens are computed for MLP neurons; these features are {subject.source.kind}")
    for i, (layer, layer_neurons) in enumerate(sorted(todo.items()), 1):
        found = neuron_output_tokens(subject.model, subject.tokenizer, layer, layer_neurons, k=cfg.k)
        write_part(store, "output_tokens", found.to_frame().to_dict("records"))
        report.completed += len(layer_neurons)
        deps.report_progress("output_tokens", i, len(todo))
    return report

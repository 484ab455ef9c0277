"""``appliance eval``: score an adapter version against its base on a dataset version.

The scoring runs as an ``eval`` job (the child the desktop app runs too), which stores the
result in the registry against the adapter version; this command shows its progress and
prints the table.
"""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from appliance.cli.context import err, out, print_json, state
from appliance.cli.progress import stage_progress
from appliance.jobs import JobEvent, JobProgress, JobRequest, run_job

_STAGES = {
    "checking": "Checking adapter, base model and dataset",
    "loading": "Loading the model",
    "scoring": "Scoring",
}


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.command("eval")(evaluate)


def run_eval_job(request: JobRequest) -> dict[str, Any]:
    """Run an ``eval`` job with a progress bar on a terminal; returns its result's data.

    Raises:
        JobError: the job failed, with its one-line message and exit code.
    """
    with stage_progress(_STAGES, counting="items") as callback:

        def on_event(event: JobEvent) -> None:
            if callback is None or not isinstance(event, JobProgress):
                return
            label = _STAGES.get(event.stage, event.stage)
            if event.stage == "scoring" and event.message:
                label = f"Scoring {event.message}"
            callback(event.done, event.total, label)

        outcome = run_job(request, on_event=on_event)
    return outcome.data()


def evaluate(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="Adapter version: NAME, NAME@N or NAME@TAG."),
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset version: NAME or NAME@V."),
    split: str = typer.Option("eval", "--split", help="Rows to score: eval, train or all."),
    max_new_tokens: int = typer.Option(
        64, "--max-new-tokens", help="Greedy answers to rows with a reference stop here."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Answer loss, perplexity, exact match and contains, for the adapter and its base; stored."""
    from appliance.evaluation.metrics import EvalSettings
    from appliance.evaluation.request import eval_request

    settings = EvalSettings(max_new_tokens=max_new_tokens)
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        request, _ = eval_request(vault, reg, [ref], dataset, split=split, settings=settings)
    data = run_eval_job(request)
    if json_out:
        print_json(data)
        return
    print_result(data)


def _count(count: Any, share: Any, rows: Any) -> str:
    if share is None:
        return "-"
    return f"{count}/{rows} ({share:.0%})"


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def metrics_row(label: str, metrics: dict[str, Any]) -> list[str]:
    """One table row of figures (answer loss, perplexity, exact, contains, tokens/s)."""
    refs = metrics.get("reference_rows")
    return [
        label,
        _number(metrics.get("answer_loss")),
        _number(metrics.get("perplexity"), 2),
        _count(metrics.get("exact_count"), metrics.get("exact_match"), refs),
        _count(metrics.get("contains_count"), metrics.get("contains"), refs),
        _number(metrics.get("tokens_per_s"), 1),
    ]


def print_result(data: dict[str, Any]) -> None:
    """The table of an ``eval`` job's result, with its notes."""
    refs = ", ".join(a["ref"] for a in data["adapters"])
    out.print(
        f"Evaluated {refs} on dataset {data['dataset']['ref']} ({data['split']} split: "
        f"{data['rows']} rows, {data['reference_rows']} with a short reference answer; "
        f"{data['settings']['precision']} on {data['settings']['device']}, "
        f"{data['seconds']:.0f} s)"
    )
    table = Table("model", "answer loss", "perplexity", "exact match", "contains", "tokens/s")
    if data.get("base") is not None:
        table.add_row(*metrics_row(f"base ({data['base_model']})", data["base"]))
    for adapter in data["adapters"]:
        table.add_row(*metrics_row(adapter["ref"], adapter["metrics"]))
    out.print(table)
    for note in data["notes"]:
        err.print(f"note: {note}", markup=False)
    ids = ", ".join(f"{a['ref']} #{a['evaluation_id']}" for a in data["adapters"])
    out.print(f"Stored in the registry ({ids}); 'appliance adapter show' lists it.")

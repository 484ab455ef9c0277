"""``appliance adapter list|show|tag|delete``: adapter versions, their lineage and tags."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from appliance.cli.context import CliState, err, out, print_json, state
from appliance.errors import NotFoundError
from appliance.registry.refs import check_name
from appliance.registry.rows import EvaluationRow, GoldenSetRow

if TYPE_CHECKING:
    from appliance.evaluation.gate import GateCheck
    from appliance.registry import Registry

adapter_app = typer.Typer(
    name="adapter",
    help="Adapter versions: list, show lineage, tag, delete. NAME@N is one version, NAME the "
    "latest.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(adapter_app)


def _eval_loss(metrics: dict[str, Any]) -> str:
    value = metrics.get("eval_loss")
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


@adapter_app.command("list")
def list_(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Only the versions of this adapter."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
    deleted: bool = typer.Option(False, "--deleted", help="Include deleted versions."),
) -> None:
    """List adapter versions with tags, base model, dataset, eval loss and date."""
    st = state(ctx)
    if name is not None:
        check_name(name, "adapter name")
    with st.registry(st.workspace(), unlock=False, readonly=True) as reg:
        rows = reg.adapters.versions(name, include_deleted=deleted)
        if name is not None and not rows:
            # "No adapter versions yet" would be wrong while others exist.
            names = sorted({a["name"] for a in reg.adapters.versions()})
            have = ", ".join(names) if names else "none yet; adapters come from training runs"
            raise NotFoundError(f"no adapter named {name!r} (adapters: {have})")
    if json_out:
        print_json(
            [
                {
                    "ref": a["ref"],
                    "name": a["name"],
                    "version": a["version"],
                    "tags": a["tags"],
                    "base_model": a["base_model"],
                    "dataset": a["dataset"],
                    "dataset_version": a["dataset_version"],
                    "run_id": a["run_id"],
                    "metrics": a["metrics"],
                    "sha256": a["sha256"],
                    "created_at": a["created_at"],
                    "deleted_at": a["deleted_at"],
                }
                for a in rows
            ]
        )
        return
    if not rows:
        out.print("No adapter versions yet; they are made by training runs ('appliance train').")
        return
    table = Table("adapter", "tags", "base model", "dataset", "eval loss", "created")
    for a in rows:
        dataset = f"{a['dataset']}@{a['dataset_version']}" if a["dataset"] else "-"
        table.add_row(
            a["ref"] + (" (deleted)" if a["deleted_at"] else ""),
            ", ".join(a["tags"]) or "-",
            a["base_model"] or "-",
            dataset,
            _eval_loss(a["metrics"]),
            a["created_at"][:19].replace("T", " "),
        )
    out.print(table)


@adapter_app.command("show")
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME (latest version), NAME@N or NAME@TAG."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show an adapter version with its full lineage."""
    st = state(ctx)
    with st.registry(st.workspace(), unlock=False, readonly=True) as reg:
        lineage = reg.adapters.lineage(ref)
        evaluations = reg.evaluations.all(lineage["ref"])
        golden = reg.golden_sets.get(lineage["name"])
    if json_out:
        print_json({**lineage, "evaluations": evaluations, "golden_set": golden})
        return
    table = Table(show_header=False, box=None)
    base = lineage["base_model"]
    ds = lineage["dataset"]
    run = lineage["run"]
    rows: list[tuple[str, Any]] = [
        ("adapter", lineage["ref"]),
        ("tags", ", ".join(lineage["tags"]) or "-"),
        ("path", lineage["path"]),
        ("sha256", lineage["sha256"]),
        ("created", f"{lineage['created_at']} by {lineage['created_by']}"),
        ("deleted", lineage["deleted_at"]),
        ("run", f"{run['id']} ({run['state']})" if run else "-"),
        ("base model", f"{base['name']} (sha256 {base['sha256']})" if base else "-"),
        (
            "dataset",
            f"{ds['name']}@{ds['version']} (sha256 {ds['sha256']})"
            + (" [deleted]" if ds and ds["deleted_at"] else "")
            if ds
            else "-",
        ),
        ("seed", lineage["seed"]),
        ("metrics", json.dumps(lineage["metrics"], sort_keys=True)),
        ("libraries", json.dumps(lineage["lib_versions"], sort_keys=True)),
        ("config", json.dumps(lineage["config"], sort_keys=True)),
        ("exports", ", ".join(f"{e['format']}: {e['path']}" for e in lineage["exports"]) or "-"),
    ]
    if golden is not None:
        rows.append(("golden set", f"{golden['dataset']} (gate metric {golden['metric']})"))
    for key, value in rows:
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)
    if evaluations:
        out.print(evaluations_table(evaluations, golden))


def evaluations_table(rows: list[EvaluationRow], golden: GoldenSetRow | None) -> Table:
    """The stored evaluation results of one adapter version, oldest first."""

    def figure(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, int | float) else "-"

    def share(metrics: dict[str, Any], count: str) -> str:
        refs = metrics.get("reference_rows")
        return f"{metrics.get(count)}/{refs}" if refs else "-"

    table = Table(
        "#", "dataset", "answer loss", "base", "exact", "contains", "when", title="evaluations"
    )
    for row in rows:
        in_golden = golden is not None and row["dataset_version_id"] == golden["dataset_version_id"]
        metrics, base = row["metrics"], row["base_metrics"] or {}
        table.add_row(
            str(row["id"]),
            f"{row['dataset']} {row['split']}" + (" (golden)" if in_golden else ""),
            figure(metrics.get("answer_loss")),
            figure(base.get("answer_loss")),
            share(metrics, "exact_count"),
            share(metrics, "contains_count"),
            row["created_at"][:16].replace("T", " "),
        )
    return table


@adapter_app.command("tag")
def tag(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME@N (or NAME for the latest version)."),
    tag_name: str = typer.Argument(..., metavar="TAG", help="e.g. production"),
    remove: bool = typer.Option(False, "--remove", help="Remove TAG from the adapter instead."),
    override: str | None = typer.Option(
        None,
        "--override",
        help="Tag production although the golden-set gate refuses; the reason is audited.",
    ),
) -> None:
    """Point TAG at an adapter version; it moves atomically from the version it was on.

    With a golden set attached to the adapter's name, the production tag needs figures on it
    no worse than the version now in production; missing or stale figures are computed first.
    """
    from appliance.evaluation import gate
    from appliance.registry import parse_ref

    st = state(ctx)
    ws = st.workspace()
    if remove:
        with ws.writer("adapter tag"), st.registry(ws) as reg:
            reg.tags.remove(parse_ref(ref).name, tag_name)
        out.print(f"Removed tag {tag_name} from {parse_ref(ref).name}")
        return
    with st.registry(ws) as reg:
        check = gate.check(reg, ref, tag_name)
        if check.gated and check.missing and check.problem is None and override is None:
            _score_for_gate(st, reg, check)
    with ws.writer("adapter tag"), st.registry(ws) as reg:
        result, check = gate.promote(reg, ref, tag_name, override=override)
    version = int(result["ref"].rpartition("@")[2])
    moved = ""
    if result["previous"] == version:
        moved = " (it was already)"
    elif result["previous"]:
        moved = f" (moved from version {result['previous']})"
    out.print(f"Tagged {result['ref']} as {tag_name}{moved}")
    if check.gated and not check.already:
        golden = check.golden["dataset"] if check.golden else "-"
        figures = f"{gate.describe_metric(check.metric, check.candidate)}"
        if check.production is not None:
            figures += (
                f" vs {check.production} {gate.describe_metric(check.metric, check.incumbent)}"
            )
        verdict = "passed" if check.passed else f"overridden: {override}"
        out.print(f"Gate on golden set {golden}: {figures}; {verdict}", markup=False)


def _score_for_gate(st: CliState, reg: Registry, check: GateCheck) -> None:
    """Run the ``eval`` job the gate needs: the missing versions on the whole golden set."""
    from appliance.cli.eval_cmd import run_eval_job
    from appliance.evaluation.request import eval_request

    assert check.golden is not None
    golden = check.golden["dataset"]
    why = f" (figures on {', '.join(check.stale)} are stale)" if check.stale else ""
    err.print(f"Scoring {', '.join(check.missing)} on golden set {golden}{why}...", markup=False)
    vault = st.vault(reg.ws)
    request, _ = eval_request(vault, reg, check.missing, golden, split="all", base=False)
    run_eval_job(request)


@adapter_app.command("golden")
def golden(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Adapter name (the golden set gates all its versions)."),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Dataset version to attach: NAME@V (NAME: the latest)."
    ),
    metric: str = typer.Option(
        "answer_loss", "--metric", help="What the gate compares: answer_loss or contains."
    ),
    remove: bool = typer.Option(False, "--remove", help="Detach the golden set."),
    json_out: bool = typer.Option(False, "--json", help="Print the golden set as JSON."),
) -> None:
    """Attach a golden set to an adapter name: 'production' then needs a version no worse on it."""
    from appliance.datasets import load_rows, resolve
    from appliance.errors import DatasetError
    from appliance.evaluation.metrics import EvalSettings, is_reference
    from appliance.evaluation.request import check_dataset

    st = state(ctx)
    ws = st.workspace()
    if dataset is None and not remove:
        with st.registry(ws, unlock=False) as reg:
            current = reg.golden_sets.get(name)
        if json_out:
            print_json(current)
        elif current is None:
            out.print(f"{name} has no golden set; attach one with --dataset D@V")
        else:
            out.print(f"Golden set of {name}: {current['dataset']} (metric {current['metric']})")
        return
    with ws.writer("adapter golden"), st.registry(ws) as reg:
        if remove:
            reg.golden_sets.remove(name)
            out.print(f"Detached the golden set of {name}; its production tag is ungated")
            return
        assert dataset is not None
        ds = resolve(reg, dataset)
        check_dataset(ds, "all")
        limit = EvalSettings().reference_max_words
        rows = load_rows(st.vault(ws), ds)
        references = sum(1 for r in rows if is_reference(r["messages"][-1]["content"], limit))
        del rows
        if references == 0 and metric == "contains":
            raise DatasetError(
                f"no row of dataset {ds['name']}@{ds['version']} has a short reference answer "
                f"(a last reply of at most {limit} words), so contains-match cannot be "
                "computed; use --metric answer_loss"
            )
        current = reg.golden_sets.set(name, ds["name"], ds["version"], metric)
    if json_out:
        print_json({**current, "reference_rows": references})
        return
    was = f" (was {current['previous']})" if current["previous"] else ""
    out.print(
        f"Golden set of {name}: {current['dataset']}{was}, gate metric {metric}; "
        f"{references}/{ds['rows']} rows have a short reference answer"
    )
    if references == 0:
        err.print(
            "note: no row has a short reference answer: evaluations on it give answer loss "
            "only (no exact match or contains)",
            markup=False,
        )


@adapter_app.command("delete")
def delete(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME@N (or NAME for the latest version)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a version: its encrypted weights go; its lineage, exports and audit rows stay.

    Refused while the version carries a tag: move or remove the tag first.
    """
    from appliance import adapters
    from appliance.cli.passphrase_cmd import confirm

    st = state(ctx)
    ws = st.workspace()
    with st.registry(ws) as reg:
        # Asked before taking the writer lock, so a pending question blocks nobody.
        record = reg.adapters.version(ref)
        confirm(
            yes,
            f"Delete adapter {record['ref']}? Its encrypted weights are removed; its lineage "
            "and audit rows stay.",
        )
        with ws.writer("adapter delete"):
            record = adapters.delete_version(ws, reg, record["ref"])
    out.print(f"Deleted adapter {record['ref']}; its lineage stays in the registry.", markup=False)

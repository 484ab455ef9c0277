"""``appliance adapter list|show|tag|delete``: adapter versions, their lineage and tags."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from appliance.cli.context import out, print_json, state
from appliance.errors import NotFoundError
from appliance.registry.refs import check_name

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
    with st.registry(st.workspace(), unlock=False) as reg:
        rows = reg.adapter_versions(name, include_deleted=deleted)
        if name is not None and not rows:
            # "No adapter versions yet" would be wrong while others exist.
            names = sorted({a["name"] for a in reg.adapter_versions()})
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
    with st.registry(st.workspace(), unlock=False) as reg:
        lineage = reg.adapter_lineage(ref)
    if json_out:
        print_json(lineage)
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
    for key, value in rows:
        table.add_row(key, "-" if value is None else str(value))
    out.print(table)


@adapter_app.command("tag")
def tag(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME@N (or NAME for the latest version)."),
    tag_name: str = typer.Argument(..., metavar="TAG", help="e.g. production"),
    remove: bool = typer.Option(False, "--remove", help="Remove TAG from the adapter instead."),
) -> None:
    """Point TAG at an adapter version; it moves atomically from the version it was on."""
    from appliance.registry import parse_ref

    st = state(ctx)
    ws = st.workspace()
    with ws.writer("adapter tag"), st.registry(ws) as reg:
        if remove:
            reg.remove_tag(parse_ref(ref).name, tag_name)
            out.print(f"Removed tag {tag_name} from {parse_ref(ref).name}")
            return
        result = reg.set_tag(ref, tag_name)
    moved = f" (moved from version {result['previous']})" if result["previous"] else ""
    out.print(f"Tagged {result['ref']} as {tag_name}{moved}")


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
        record = reg.adapter_version(ref)
        confirm(
            yes,
            f"Delete adapter {record['ref']}? Its encrypted weights are removed; its lineage "
            "and audit rows stay.",
        )
        with ws.writer("adapter delete"):
            record = adapters.delete_version(ws, reg, record["ref"])
    out.print(f"Deleted adapter {record['ref']}; its lineage stays in the registry.", markup=False)

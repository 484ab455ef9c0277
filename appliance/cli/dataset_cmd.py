"""``appliance dataset import|list|show|export|delete``: encrypted datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from appliance import datasets
from appliance.cli.context import err, out, print_json, state
from appliance.cli.passphrase_cmd import confirm
from appliance.datasets.columns import ROLES
from appliance.datasets.formats import FORMATS
from appliance.datasets.problems import problem_lines
from appliance.errors import NotFoundError
from appliance.registry.refs import check_name
from appliance.registry.rows import DatasetVersionRow
from appliance.training.dataset_tokens import DEFAULT_MAX_LENGTH

dataset_app = typer.Typer(
    name="dataset",
    help="Encrypted datasets: import, list, show, export, delete.",
    no_args_is_help=True,
)
_HIDDEN = ("id", "deleted_at")


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(dataset_app)


def _public(version: DatasetVersionRow) -> dict[str, Any]:
    return {k: v for k, v in version.items() if k not in _HIDDEN}


def _print_problems(lines: list[str]) -> None:
    for line in lines:
        err.print(f"  {line}", markup=False)


@dataset_app.command("import")
def import_(
    ctx: typer.Context,
    path: Path = typer.Argument(
        ..., help="A .jsonl, .json (array), .csv, .tsv, .parquet or .txt file."
    ),
    name: str = typer.Option(
        ..., "--name", help="Dataset name; an existing name gets version N+1."
    ),
    fmt: str = typer.Option(
        "auto", "--format", help=f"auto (from the fields) or one of: {', '.join(FORMATS)}."
    ),
    mapping: list[str] = typer.Option(
        [],
        "--map",
        metavar="ROLE=COLUMN",
        help="Read a role from a column of another name, e.g. --map output=answer (repeat it). "
        f"Roles: {', '.join(ROLES)}.",
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="Import the valid rows and record the skipped ones."
    ),
    eval_fraction: float = typer.Option(
        0.1, "--eval-fraction", help="Share of rows held out for evaluation (0 to 0.5)."
    ),
    seed: int = typer.Option(42, "--seed", help="Seed of the train/eval split."),
    json_out: bool = typer.Option(False, "--json", help="Print the new version as JSON."),
) -> None:
    """Validate a file and store it, encrypted, as a new dataset version."""
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    try:
        with ws.writer("dataset import"), st.registry(ws) as reg:
            version, prepared = datasets.import_file(
                vault,
                reg,
                path,
                name,
                fmt=fmt,
                skip_invalid=skip_invalid,
                eval_fraction=eval_fraction,
                seed=seed,
                columns=mapping,
            )
    except datasets.DatasetValidationError as exc:
        _print_problems(exc.details())
        raise
    if prepared.skipped:
        err.print(f"skipped {prepared.skipped_rows} invalid rows:", markup=False)
        _print_problems(problem_lines(prepared.skipped))
    if json_out:
        print_json(_public(version))
        return
    out.print(
        f"Imported {version['name']} version {version['version']}: {version['rows']:,} rows "
        f"({version['train_rows']:,} train, {version['eval_rows']:,} eval), "
        f"{version['duplicates_removed']:,} duplicates removed, "
        f"{version['skipped_rows']:,} invalid rows skipped; format {version['format']}, "
        f"{version['kind']}; sha256 {version['sha256']}",
        markup=False,
    )


@dataset_app.command("list")
def list_(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="Only the versions of this dataset."),
    deleted: bool = typer.Option(False, "--deleted", help="Include deleted versions."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """List dataset versions (no passphrase needed: only the registry is read)."""
    st = state(ctx)
    if name is not None:
        check_name(name, "dataset name")
    with st.registry(st.workspace(), unlock=False, readonly=True) as reg:
        versions = reg.datasets.versions(name, include_deleted=deleted)
        if name is not None and not versions:
            # "No datasets yet" would be wrong while others exist: say which name is unknown.
            if reg.datasets.versions(name, include_deleted=True):
                if json_out:
                    print_json([])
                else:
                    out.print(
                        f"Every version of dataset {name} is deleted; add --deleted to list them.",
                        markup=False,
                    )
                return
            names = sorted({v["name"] for v in reg.datasets.versions()})
            have = ", ".join(names) if names else "none yet"
            raise NotFoundError(f"no dataset named {name!r} (datasets: {have})")
    if json_out:
        print_json([_public(v) for v in versions])
        return
    if not versions:
        out.print("No datasets yet; import one with 'appliance dataset import FILE --name NAME'.")
        return
    table = Table("dataset", "rows", "train", "eval", "dups", "skipped", "format", "created")
    for v in versions:
        label = f"{v['name']}@{v['version']}" + (" (deleted)" if v.get("deleted_at") else "")
        table.add_row(
            label,
            f"{v['rows']:,}",
            f"{v['train_rows']:,}",
            f"{v['eval_rows']:,}",
            f"{v['duplicates_removed']:,}",
            f"{v['skipped_rows']:,}",
            f"{v['format']} ({v['kind']})",
            str(v["created_at"])[:19].replace("T", " "),
        )
    out.print(table)


@dataset_app.command("show")
def show(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME (latest version) or NAME@VERSION."),
    rows: int = typer.Option(5, "--rows", help="Rows to preview, decrypted in memory (0: none)."),
    split: str | None = typer.Option(None, "--split", help="Preview only train or eval rows."),
    model: str | None = typer.Option(
        None, "--model", help="Token statistics with this base model's tokenizer and template."
    ),
    max_length: int = typer.Option(
        DEFAULT_MAX_LENGTH, "--max-length", help="Sequence length to count examples over."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a version: counts, statistics, a preview and, with --model, token statistics."""
    if rows < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--rows")
    if split not in (None, "train", "eval"):
        raise typer.BadParameter("must be train or eval", param_hint="--split")
    st = state(ctx)
    ws = st.workspace()
    needs_data = rows > 0 or model is not None
    with st.registry(ws, unlock=needs_data, readonly=True) as reg:
        version = datasets.resolve(reg, ref)
        result = _public(version)
        # Lineage the other way: every adapter version trained on this dataset version.
        result["adapters"] = [
            a["ref"] for a in reg.adapters.from_dataset(version["name"], version["version"])
        ]
        if needs_data:
            data = datasets.load_rows(st.vault(ws), version)
            chosen = [r for r in data if split is None or r["split"] == split]
            if rows:
                result["preview"] = chosen[:rows]
            if model is not None:
                result["tokens"] = _token_stats(ws, reg, model, data, max_length)
    if json_out:
        print_json(result)
        return
    _print_version(result)


def _token_stats(
    ws: Any, reg: Any, model: str, data: list[dict[str, Any]], max_length: int
) -> dict[str, Any]:
    from appliance.training import dataset_tokens as tokens

    folder, label = tokens.tokenizer_folder(ws, reg, model)
    tokenizer = tokens.load_tokenizer(folder)
    return {"model": label, **tokens.token_stats(data, tokenizer, max_length)}


def _print_version(v: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for key in (
        "name",
        "version",
        "kind",
        "format",
        "source_name",
        "rows",
        "train_rows",
        "eval_rows",
        "eval_fraction",
        "seed",
        "duplicates_removed",
        "skipped_rows",
        "chars",
        "sha256",
        "file_sha256",
        "created_at",
        "created_by",
    ):
        table.add_row(key, str(v.get(key)))
    stats = v.get("stats") or {}
    for key, value in stats.items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    if "tokens" in v:
        t = v["tokens"]
        table.add_row(
            "tokens",
            f"min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}; "
            f"{t['over_max_length']} over {t['max_length']}, {t['answer_lost']} of them with "
            f"no answer left ({t['model']})",
        )
    table.add_row("adapters", ", ".join(v.get("adapters") or []) or "-")
    out.print(table)
    for problem in (v.get("skipped_detail") or [])[:5]:
        field = f"field '{problem['field']}': " if problem.get("field") else ""
        out.print(f"skipped line {problem['line']}: {field}{problem['problem']}", markup=False)
    for row in v.get("preview", []):
        out.print(json.dumps(row, ensure_ascii=False), markup=False, soft_wrap=True)


@dataset_app.command("export")
def export(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME (latest version) or NAME@VERSION."),
    out_file: Path = typer.Option(..., "--out", help="Plaintext JSONL file to write."),
    force: bool = typer.Option(
        False, "--force", help="Replace an unchanged earlier dataset export at --out."
    ),
) -> None:
    """Write a version as plaintext canonical JSONL to a file you choose (audited)."""
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with ws.writer("dataset export"), st.registry(ws) as reg:
        version = datasets.resolve(reg, ref)
        target = datasets.export_version(vault, reg, version, out_file, force=force)
    out.print(
        f"Exported {version['name']} version {version['version']} ({version['rows']:,} rows) "
        f"as plaintext to {target}; sha256 {version['sha256']}",
        markup=False,
    )


@dataset_app.command("delete")
def delete(
    ctx: typer.Context,
    ref: str = typer.Argument(..., help="NAME (latest version) or NAME@VERSION."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a version: its encrypted file goes, its registry row stays for lineage (audited)."""
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        # Asked before taking the writer lock, so a pending question blocks nobody.
        version = datasets.resolve(reg, ref)
        confirm(
            yes,
            f"Delete dataset {version['name']} version {version['version']} "
            f"({version['rows']:,} rows)? Its encrypted file is removed.",
        )
        with ws.writer("dataset delete"):
            version = datasets.resolve(reg, f"{version['name']}@{version['version']}")
            datasets.delete_version(vault, reg, version)
    out.print(f"Deleted dataset {version['name']} version {version['version']}.")

"""The ``eval`` job: score adapter versions (and their base) on a dataset version, store it.

Params: ``adapters`` (references), ``dataset`` (``{"name", "version"}``), ``split`` (``eval``,
``train`` or ``all``), ``base`` (also score the base model alone), ``settings``
(:class:`~appliance.evaluation.metrics.EvalSettings`). The parent hands over the data keys of
the adapter objects and of the dataset object, and the audit key (the job adds registry rows).

Progress: stages ``checking``, ``loading``, then ``scoring`` with ``done``/``total`` work units
(a batch row's loss or a greedy answer) and the model being scored in ``message``.

Result data::

    {"dataset": {"ref", "sha256"}, "split", "rows", "rows_too_long", "reference_rows",
     "base": METRICS | null, "adapters": [{"ref", "metrics", "evaluation_id"}],
     "settings", "lib_versions", "notes": [...], "seconds"}
"""

from __future__ import annotations

import hashlib
import time
from importlib import metadata
from typing import TYPE_CHECKING, Any

from appliance import __version__
from appliance.datasets.canonical import Row, decode
from appliance.datasets.store import version_label
from appliance.errors import DatasetError
from appliance.evaluation.metrics import EvalSettings
from appliance.evaluation.request import check_dataset
from appliance.generation.job import load_engine
from appliance.jobs.child import JobContext

if TYPE_CHECKING:
    from appliance.registry.rows import DatasetVersionRow

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def lib_versions() -> dict[str, str]:
    """The versions of the libraries that computed the figures (lineage)."""
    found = {"appliance": __version__}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def read_rows(ctx: JobContext, ds: DatasetVersionRow) -> list[Row]:
    """The dataset version's rows, decrypted with the key handed over and checked against the
    registry's sha256."""
    what = version_label(ds)
    data = ctx.keys.read(ctx.ws.home / ds["path"], ds["object_id"], what)
    if hashlib.sha256(data).hexdigest() != ds["sha256"]:
        raise DatasetError(f"{what} does not match its registry record (sha256)")
    return decode(data, what)


def evaluate(ctx: JobContext) -> dict[str, Any]:
    """Handler of the ``eval`` job kind."""
    from appliance.evaluation.scoring import encode_rows, score

    started = time.perf_counter()
    params = ctx.params
    refs = [str(r) for r in params.get("adapters") or []]
    split = str(params.get("split", "eval"))
    include_base = bool(params.get("base", True))
    settings = EvalSettings.from_dict(params.get("settings"))
    wanted = params.get("dataset") or {}
    with ctx.registry() as reg:
        ds = reg.datasets.version(str(wanted.get("name")), int(wanted.get("version", 0)))
    check_dataset(ds, split)
    ds_ref = f"{ds['name']}@{ds['version']}"
    rows = [r for r in read_rows(ctx, ds) if split == "all" or r["split"] == split]
    engine, loaded = load_engine(ctx, refs, None)
    encoded = encode_rows(rows, engine, settings)
    del rows
    if not encoded.rows:
        raise DatasetError(
            f"no row of dataset {ds_ref} ({split} split) fits the model's context of "
            f"{engine.context_length} tokens; nothing was scored"
        )
    adapters = list(dict.fromkeys(loaded.refs().values()))
    columns: list[str | None] = [*([None] if include_base else []), *adapters]
    per_model = len(encoded.rows) + encoded.references
    total, done = per_model * len(columns), 0
    results: dict[str | None, dict[str, Any]] = {}
    for column in columns:
        label = column or f"base model {loaded.model['name']}"

        def advance(units: int, label: str = label) -> None:
            nonlocal done
            done += units
            ctx.progress(done, total, "scoring", label)

        ctx.progress(done, total, "scoring", label)
        scores = score(engine, column, encoded, settings, advance)
        metrics = scores.metrics()
        metrics["rows_too_long"] = encoded.too_long
        results[column] = metrics
    stored_settings = {
        **settings.to_dict(),
        "decoding": "greedy",
        "precision": engine.precision,
        "device": engine.device,
    }
    versions = lib_versions()
    seconds = time.perf_counter() - started
    ids: dict[str, int] = {}
    # One transaction: a cancel or a failure stores the results of all versions or of none.
    with ctx.ws.writer("eval"), ctx.registry() as reg, reg.transaction():
        for ref in adapters:
            ids[ref] = reg.evaluations.add(
                ref,
                dataset=ds["name"],
                dataset_version=ds["version"],
                split=split,
                metrics=results[ref],
                base_metrics=results.get(None),
                settings=stored_settings,
                lib_versions=versions,
                seconds=seconds,
            )
    return {
        "dataset": {"ref": ds_ref, "sha256": ds["sha256"]},
        "base_model": loaded.model["name"],
        "split": split,
        "rows": len(encoded.rows),
        "rows_too_long": encoded.too_long,
        "reference_rows": encoded.references,
        "base": results.get(None),
        "adapters": [
            {"ref": ref, "metrics": results[ref], "evaluation_id": ids[ref]} for ref in adapters
        ],
        "settings": stored_settings,
        "lib_versions": versions,
        "notes": notes(encoded.references, encoded.too_long, settings, engine.context_length),
        "seconds": seconds,
    }


def notes(references: int, too_long: int, settings: EvalSettings, context: int) -> list[str]:
    """What a reader of the figures must know: missing reference answers, rows left out."""
    found = []
    if references == 0:
        found.append(
            f"no row has a short reference answer (a last reply of at most "
            f"{settings.reference_max_words} words): loss only, no exact match or contains"
        )
    if too_long:
        found.append(
            f"{too_long} row(s) longer than the model's context ({context} tokens) were left out"
        )
    return found

"""The parent side of an ``eval`` job, and the checks on the dataset it scores. Torch-free."""

from __future__ import annotations

from appliance.datasets.store import resolve, version_label
from appliance.errors import DatasetError, UsageError
from appliance.evaluation.metrics import EvalSettings
from appliance.generation.plan import plan
from appliance.jobs import JobRequest
from appliance.registry import Registry
from appliance.registry.evaluations import SPLITS
from appliance.registry.rows import DatasetVersionRow
from appliance.vault import Vault


def check_dataset(ds: DatasetVersionRow, split: str) -> None:
    """Refuse a dataset version that cannot be scored on ``split``.

    Raises:
        UsageError: an unknown split.
        DatasetError: plain-text rows (no answers to score), or no row in the split.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use eval, train or all")
    ref = f"{ds['name']}@{ds['version']}"
    if ds.get("kind") != "chat":
        raise DatasetError(
            f"dataset {ref} holds plain-text rows (format {ds.get('format') or 'text'}); an "
            "evaluation scores answers, so it needs conversations: import questions with "
            "reference answers as messages, alpaca, sharegpt or completion rows"
        )
    if not ds.get("path") or not ds.get("object_id"):
        raise DatasetError(f"dataset {ref} has no stored rows in this workspace; import it again")
    counts = {"eval": ds.get("eval_rows"), "train": ds.get("train_rows"), "all": ds.get("rows")}
    if counts[split] == 0:
        hint = "use --split all or --split train" if split == "eval" else "use --split all"
        raise DatasetError(f"dataset {ref} has no rows in its {split} split; {hint}")


def eval_request(
    vault: Vault,
    reg: Registry,
    refs: list[str],
    dataset: str,
    *,
    split: str = "eval",
    base: bool = True,
    settings: EvalSettings | None = None,
) -> tuple[JobRequest, DatasetVersionRow]:
    """An ``eval`` job scoring adapter versions ``refs`` (and their base when ``base``) on
    dataset version ``dataset`` (NAME or NAME@V); the job stores one result per adapter.

    Returns:
        The request and the dataset version's registry row.

    Raises:
        UsageError, NotFoundError, IntegrityError, DatasetError: refused before any process
            starts (unknown adapter or dataset, deleted base model, plain-text dataset...).
    """
    if not refs:
        raise UsageError("name at least one adapter version to evaluate")
    loaded = plan(vault.ws, reg, refs, check_files=False)
    ds = resolve(reg, dataset)
    check_dataset(ds, split)
    objects = [*loaded.objects(), (vault.path(ds["path"]), ds["object_id"], version_label(ds))]
    params = {
        "adapters": list(refs),
        "dataset": {"name": ds["name"], "version": ds["version"]},
        "split": split,
        "base": base,
        "settings": (settings or EvalSettings()).to_dict(),
    }
    request = JobRequest.for_vault(vault, "eval", params, objects=objects, writes_registry=True)
    return request, ds

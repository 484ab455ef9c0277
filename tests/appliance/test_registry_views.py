"""The registry as the pages see it: catalog, lineage, compare, tag history, audit, delete."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import adapters
from appliance.errors import NotFoundError, RegistryError, UsageError
from appliance.registry import Registry
from appliance.registry.catalog import CatalogFilter, adapter_catalog, filter_choices, live_refs
from appliance.registry.history import AuditFilter, audit_log, plan_tag, tag_history
from appliance.training import events as ev
from appliance.training.compare import compare_versions, flatten, run_curves
from appliance.training.lineage import lineage_of
from appliance.workspace import Workspace
from tests.helpers.cli import CliRunner
from tests.helpers.registry_data import add_adapter, add_dataset, add_fake_model

BASE_CONFIG = {
    "method": "qlora",
    "lora": {"rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]},
    "optim": {"learning_rate": 0.01, "scheduler": "cosine"},
    "schedule": {"max_steps": 4, "micro_batch_size": 2},
    "seed": 3,
}


@pytest.fixture
def reg(ws: Workspace) -> Iterator[Registry]:
    with Registry.open(ws) as registry:
        add_fake_model(registry, "base")
        other = add_fake_model(registry, "other-base")
        registry.core.db.table("base_models").update(other, {"sha256": "ef" * 32})
        add_dataset(registry, "docs")
        add_dataset(registry, "docs", sha256="99" * 32)
        add_dataset(registry, "faq", sha256="77" * 32)
        yield registry


def _write_events(reg: Registry, run_id: str, events: list[ev.Event]) -> Path:
    folder = reg.ws.home / reg.runs.get(run_id)["path"]
    with ev.EventLog(folder / ev.METRICS_FILE) as log:
        for event in events:
            log.emit(event)
    return folder


def _steps(run_id: str, losses: list[float], tokens_per_step: int) -> list[ev.Event]:
    total = len(losses)
    out: list[ev.Event] = [
        ev.Started(
            run_id=run_id,
            model="base",
            dataset="docs@1",
            device="cpu",
            trainable_params=10,
            total_params=100,
            total_steps=total,
        ),
        ev.Eval(run_id=run_id, step=0, eval_loss=3.0),
    ]
    for i, loss in enumerate(losses, start=1):
        out.append(
            ev.Step(
                run_id=run_id,
                step=i,
                total_steps=total,
                epoch=i / total,
                loss=loss,
                lr=0.01,
                tokens_per_s=100.0,
                tokens_seen=i * tokens_per_step,
            )
        )
    out.append(ev.Eval(run_id=run_id, step=total, eval_loss=losses[-1] + 0.25))
    out.append(ev.Finished(run_id=run_id, step=total, wall_s=12.5, peak_memory=123456))
    return out


# -- catalog -------------------------------------------------------------------------------------


def test_catalog_groups_filters_and_sorts(reg: Registry) -> None:
    add_adapter(reg, "contracts", eval_loss=1.5, dataset="docs", dataset_version=1)
    add_adapter(reg, "contracts", eval_loss=0.9, dataset="docs", dataset_version=2)
    add_adapter(reg, "faq-bot", base="other-base", dataset="faq", eval_loss=1.2)
    reg.tags.set("contracts@1", "production")

    groups = adapter_catalog(reg)
    assert [g.name for g in groups] == ["faq-bot", "contracts"]  # newest version first
    assert [v.ref for v in groups[1].versions] == ["contracts@2", "contracts@1"]
    assert groups[1].tags == {"production": 1}
    first = groups[1].versions[1]
    assert (first.base_model, first.dataset, first.eval_loss) == ("base", "docs@1", 1.5)

    by_loss = adapter_catalog(reg, CatalogFilter(sort="eval_loss"))
    assert [g.name for g in by_loss] == ["contracts", "faq-bot"]
    assert [v.version for v in by_loss[0].versions] == [2, 1]

    only = adapter_catalog(reg, CatalogFilter(base_model="other-base"))
    assert [v.ref for g in only for v in g.versions] == ["faq-bot@1"]
    assert [
        v.ref for g in adapter_catalog(reg, CatalogFilter(dataset="docs@2")) for v in g.versions
    ] == ["contracts@2"]
    assert len(adapter_catalog(reg, CatalogFilter(dataset="docs"))[0].versions) == 2
    tagged = adapter_catalog(reg, CatalogFilter(tag="production"))
    assert [v.ref for g in tagged for v in g.versions] == ["contracts@1"]

    choices = filter_choices(reg)
    assert choices.base_models == ("base", "other-base")
    assert choices.datasets == ("docs", "faq")
    assert choices.tags == ("production",)
    with pytest.raises(UsageError, match="unknown sort 'size'"):
        CatalogFilter(sort="size")


# -- lineage and compare -------------------------------------------------------------------------


def test_lineage_has_run_device_wall_time_and_exports(reg: Registry, tmp_path: Path) -> None:
    run_id, _ = add_adapter(reg, "contracts", config=BASE_CONFIG)
    _write_events(reg, run_id, _steps(run_id, [2.0, 1.5], 10))
    reg.core.db.table("adapter_versions").update(
        1, {"metrics": '{"eval_loss": 1.6, "wall_s": 12.5, "peak_memory": 123456}'}
    )
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.gguf").write_bytes(b"gguf")
    reg.exports.add(
        "contracts@1",
        format="gguf",
        path=out,
        details={"verification": {"passed": True, "max_abs_diff": 0.01}},
    )
    reg.audit(
        "export.failed",
        "contracts@1",
        {"format": "merged", "path": "/srv/m", "verification": {"passed": False}},
    )

    lineage = lineage_of(reg, "contracts@1")
    assert lineage.run is not None
    assert (lineage.run.id, lineage.run.state, lineage.run.device) == (run_id, "finished", "cpu")
    assert (lineage.run.wall_s, lineage.run.peak_memory) == (12.5, 123456)
    assert lineage.base_model is not None
    assert lineage.base_model.sha256 == "ab" * 32
    assert lineage.dataset is not None
    assert lineage.dataset.ref == "docs@2"
    assert lineage.config["lora"]["rank"] == 8
    assert lineage.seed == 3
    assert [(e.format, e.passed) for e in lineage.exports] == [("gguf", True), ("merged", False)]
    assert lineage.exports[0].max_abs_diff == 0.01


def test_compare_lists_exactly_the_changed_settings_and_replays_curves(reg: Registry) -> None:
    changed = {
        **BASE_CONFIG,
        "lora": {**BASE_CONFIG["lora"], "rank": 16},  # type: ignore[dict-item]
        "optim": {**BASE_CONFIG["optim"], "learning_rate": 0.005},  # type: ignore[dict-item]
    }
    run_a, _ = add_adapter(reg, "contracts", config=BASE_CONFIG, dataset_version=1)
    run_b, _ = add_adapter(reg, "contracts", config=changed, dataset_version=1)
    _write_events(reg, run_a, _steps(run_a, [2.0, 1.6, 1.3, 1.1], 10))
    # A resumed run repeats step 3 after its checkpoint at step 2: the later point wins.
    events = _steps(run_b, [2.1, 1.8, 1.7], 25)
    redo = ev.Step(
        run_id=run_b,
        step=3,
        total_steps=3,
        epoch=1.0,
        loss=1.4,
        lr=0.01,
        tokens_per_s=1.0,
        tokens_seen=75,
    )
    folder = _write_events(reg, run_b, [*events[:-2], redo, *events[-2:]])

    comparison = compare_versions(reg, ["contracts@1", "contracts@2"])
    assert comparison.refs == ("contracts@1", "contracts@2")
    diffs = {row.key: row.values for row in comparison.config_differences}
    assert diffs == {"lora.rank": (8, 16), "optim.learning_rate": (0.01, 0.005)}
    assert {row.key for row in comparison.config} >= {"lora.alpha", "schedule.max_steps", "seed"}
    assert comparison.same_base
    assert comparison.same_data
    metrics = {row.key: row for row in comparison.metrics}
    assert not metrics["train_loss"].differs

    a, b = comparison.curves
    assert [p.step for p in a.train] == [1, 2, 3, 4]
    assert [p.loss for p in b.train] == [2.1, 1.8, 1.4]
    assert [p.tokens_seen for p in b.train] == [25, 50, 75]
    assert [(p.step, p.epoch, p.loss) for p in a.eval] == [(0, 0.0, 3.0), (4, 1.0, 1.35)]
    assert b.problem is None

    # Different data and base are said so; a curve file torn in the middle is reported.
    add_adapter(reg, "contracts", base="other-base", dataset="faq")
    other = compare_versions(reg, ["contracts@1", "contracts@3"])
    assert not other.same_base
    assert not other.same_data
    (folder / ev.METRICS_FILE).write_text('{"type": "step"\n{"type":"eval"}\n')
    broken = run_curves(folder)
    assert broken.problem is not None
    assert "line 1" in broken.problem
    with pytest.raises(UsageError, match="at least two"):
        compare_versions(reg, ["contracts@1", "contracts@1"])


def test_flatten_keeps_lists_whole() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}
    nothing = run_curves(None)
    assert (nothing.train, nothing.problem) == ((), "no training run is recorded for this version")


# -- tags and audit ------------------------------------------------------------------------------


def test_plan_tag_names_the_version_that_loses_it_and_history_records_moves(
    reg: Registry,
) -> None:
    for _ in range(3):
        add_adapter(reg, "contracts")
    first = plan_tag(reg, "contracts@1", "production")
    assert first.previous is None
    assert first.describe() == (
        "contracts@1 will be tagged production; no version of contracts has it now."
    )
    reg.tags.set("contracts@1", "production")
    move = plan_tag(reg, "contracts@3", "production")
    assert (move.previous, move.target) == ("contracts@1", "contracts@3")
    assert move.describe() == (
        "The tag production will move from contracts@1 to contracts@3: contracts@1 loses it."
    )
    reg.tags.set("contracts@3", "production")
    reg.tags.set("contracts@2", "staging")
    reg.tags.remove("contracts", "staging")
    assert not plan_tag(reg, "contracts@3", "production").changes_anything
    history = tag_history(reg, "contracts")
    assert [(h.tag, h.action, h.version, h.previous) for h in history] == [
        ("production", "set", 1, None),
        ("production", "set", 3, 1),
        ("staging", "set", 2, None),
        ("staging", "removed", None, None),
    ]
    with pytest.raises(UsageError, match="invalid tag"):
        plan_tag(reg, "contracts@1", "2fast")


def test_audit_log_filters_by_action_user_object_and_time(reg: Registry) -> None:
    add_adapter(reg, "contracts")
    reg.tags.set("contracts@1", "staging")
    log = audit_log(reg)
    assert log.total == len(log.entries) > 5
    assert "adapter" in log.actions
    assert "adapter.tag" in log.actions
    tags = audit_log(reg, AuditFilter(action="adapter.tag"))
    assert [e.object for e in tags.entries] == ["contracts@1"]
    family = audit_log(reg, AuditFilter(action="adapter"))
    assert {e.action for e in family.entries} == {"adapter.create", "adapter.tag"}
    assert audit_log(reg, AuditFilter(object="faq")).entries[0].action == "dataset.import"
    user = log.users[0]
    assert len(audit_log(reg, AuditFilter(user=user)).entries) == log.total
    assert audit_log(reg, AuditFilter(user="mallory")).entries == ()
    today = log.entries[-1].time[:10]
    assert len(audit_log(reg, AuditFilter(since=today, until=today)).entries) == log.total
    assert audit_log(reg, AuditFilter(until="2000-01-01")).entries == ()
    with pytest.raises(UsageError, match="'yesterday' is not a date"):
        AuditFilter(since="yesterday")


# -- delete --------------------------------------------------------------------------------------


def test_delete_is_refused_while_tagged_and_keeps_lineage_and_audit(reg: Registry) -> None:
    add_adapter(reg, "contracts")
    add_adapter(reg, "contracts")
    reg.tags.set("contracts@1", "production")
    folder = reg.ws.home / reg.adapters.version("contracts@1")["path"]
    with pytest.raises(RegistryError, match=r"contracts@1 carries the tag\(s\) production; move"):
        adapters.delete_version(reg.ws, reg, "contracts@1")
    assert folder.is_dir()
    reg.tags.remove("contracts", "production")
    adapters.delete_version(reg.ws, reg, "contracts@1")
    assert not folder.exists()
    with pytest.raises(NotFoundError, match=r"adapter contracts@1 was deleted at .*; its lineage"):
        reg.adapters.version("contracts@1")
    assert reg.adapters.version("contracts")["version"] == 2
    assert [a["ref"] for a in reg.adapters.versions()] == ["contracts@2"]
    assert live_refs(reg) == ["contracts@2"]
    lineage = lineage_of(reg, "contracts@1")
    assert lineage.deleted_at is not None
    assert lineage.run is not None
    deleted = adapter_catalog(reg, CatalogFilter(include_deleted=True))[0].versions
    assert [(v.ref, v.deleted) for v in deleted] == [("contracts@2", False), ("contracts@1", True)]
    (row,) = reg.audit_rows(action="adapter.delete")
    assert row["object"] == "contracts@1"
    assert reg.verify_audit().ok
    # The next version number is never reused.
    _, version = add_adapter(reg, "contracts")
    assert version == 3


def test_cli_adapter_delete(cli: CliRunner, ws: Workspace) -> None:
    with Registry.open(ws) as registry:
        add_fake_model(registry)
        add_dataset(registry)
        add_adapter(registry, "contracts")
        add_adapter(registry, "contracts")
        registry.tags.set("contracts@2", "production")
    refused = cli("adapter", "delete", "contracts@2", "--yes")
    assert refused.returncode == 1
    assert refused.err_lines == [
        "error: adapter contracts@2 carries the tag(s) production; move or remove them first "
        "('appliance adapter tag contracts@2 TAG --remove'), then delete it"
    ]
    asked = cli("adapter", "delete", "contracts@1")
    assert asked.returncode == 2
    assert "pass --yes" in asked.stderr
    done = cli("adapter", "delete", "contracts@1", "--yes")
    assert done.returncode == 0, done.stderr
    assert "Deleted adapter contracts@1" in done.stdout
    listed = cli("adapter", "list", "--json", "--deleted")
    assert '"deleted_at": null' in listed.stdout
    assert "contracts@1" in listed.stdout
    gone = cli("adapter", "show", "contracts@1", "--json")
    assert gone.returncode == 0
    assert '"deleted_at": "' in gone.stdout
    with sqlite3.connect(ws.registry_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM adapter_versions").fetchone()[0] == 2

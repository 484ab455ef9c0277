"""The Datasets page over a real workspace: list, record, preview, export, delete, and the
token histogram measured by a real child process (through a lock of the window)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pytestqt.qtbot import QtBot

from appliance import datasets
from appliance.datasets import token_cache
from appliance.models import import_model
from appliance.registry.rows import DatasetVersionRow
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import Workspace
from gui.main_window import MainWindow
from gui.pages.datasets import PREVIEW_ROWS, DatasetsPage
from tests.helpers.registry_data import add_adapter, add_fake_model

ORGFACTS = Path(__file__).resolve().parents[1] / "data" / "orgfacts" / "orgfacts.jsonl"
MESSAGES = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid" / "messages.jsonl"
PASSPHRASE = "datasets page passphrase"
WAIT_MS = 60_000
JOB_WAIT_MS = 300_000


@pytest.fixture
def workspace(ws: Workspace) -> UnlockedWorkspace:
    return UnlockedWorkspace(Vault.create(ws, PASSPHRASE, "alice", target_s=0))


def _import(workspace: UnlockedWorkspace, path: Path, name: str) -> DatasetVersionRow:
    with workspace.registry() as reg:
        version, _ = datasets.import_file(workspace.vault, reg, path, name)
    return version


def _page(qtbot: QtBot, workspace: UnlockedWorkspace) -> DatasetsPage:
    page = DatasetsPage(workspace)
    qtbot.addWidget(page)
    page.resize(1200, 800)
    page.show()
    return page


def _wait_rows(qtbot: QtBot, page: DatasetsPage) -> None:
    qtbot.waitUntil(
        lambda: page.rows_task is not None and not page.rows_task.running, timeout=WAIT_MS
    )


def test_list_record_preview_and_full_text(
    qtbot: QtBot, workspace: UnlockedWorkspace, tmp_path: Path
) -> None:
    long_text = "First line of a long document.\n" + "A clause about liability. " * 40
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": long_text}) + "\n" + json.dumps({"text": "short"}) + "\n")
    org = _import(workspace, ORGFACTS, "orgfacts")
    _import(workspace, docs, "docs")
    with workspace.registry() as reg:
        add_fake_model(reg, "base")
        add_adapter(reg, "legal", dataset="orgfacts", dataset_version=1)
    page = _page(qtbot, workspace)
    assert page.names() == ["docs", "orgfacts"]
    assert page.tree.topLevelItemCount() == 2
    page.select("orgfacts@1")
    _wait_rows(qtbot, page)
    labels = {k: v.text() for k, v in page.detail_labels.items()}
    assert page.heading.text() == "orgfacts, version 1"
    assert labels["rows"] == "80"
    assert labels["sha256"] == org["sha256"]
    assert labels["adapters"] == "legal@1"
    assert labels["format"] == "messages (chat)"
    assert labels["split"].startswith(f"{org['train_rows']} / {org['eval_rows']}")
    model = page.rows_view.rows
    assert model.rowCount() == PREVIEW_ROWS
    rows = datasets.load_rows(workspace.vault, org)
    assert model.headers() == ["#", "Split", "Turns", "User", "Assistant"]
    assert model.cell(0, 3) == rows[0]["messages"][0]["content"]
    assert model.cell(0, 1) == rows[0]["split"]

    page.select("docs@1")
    _wait_rows(qtbot, page)
    assert page.rows_view.rows.headers() == ["#", "Split", "Text"]
    shown = page.rows_view.rows.data(page.rows_view.rows.index(0, 2))
    assert shown.endswith("…")
    assert "\n" not in shown
    assert len(shown) == 160
    dialog = page.rows_view.open_row(0)
    assert dialog.text.toPlainText() == long_text.strip()
    page.rows_view.close_dialog()
    assert not dialog.isVisible()
    assert dialog.text.toPlainText() == ""


def test_export_is_audited_and_refused_inside_the_workspace(
    qtbot: QtBot, workspace: UnlockedWorkspace, tmp_path: Path
) -> None:
    version = _import(workspace, ORGFACTS, "orgfacts")
    page = _page(qtbot, workspace)
    inside = workspace.ws.home / "exports" / "leak.jsonl"
    task = page.export(version, inside)
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass
    assert "inside" in page.status.text()
    assert "workspace" in page.status.text()
    assert not inside.exists()
    out = tmp_path / "orgfacts.jsonl"
    task = page.export(version, out)
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass
    assert page.status.text().startswith(f"Exported orgfacts@1 (80 rows) as plaintext to {out}")
    assert out.read_bytes() == bytes(datasets.read_plaintext(workspace.vault, version))
    with workspace.registry() as reg:
        (row,) = reg.audit_rows(action="dataset.export")
        assert row["details"]["out"] == str(out)
    # Replacing a file that is not an earlier export is refused, as with the CLI's --force.
    other = tmp_path / "notes.jsonl"
    other.write_text("my own notes\n")
    task = page.export(version, other, force=True)
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass
    assert other.read_text() == "my own notes\n"
    assert "refus" in page.status.text() or "not" in page.status.text()


def test_delete_names_the_adapters_and_keeps_lineage(
    qtbot: QtBot, workspace: UnlockedWorkspace
) -> None:
    first = _import(workspace, ORGFACTS, "orgfacts")
    second = _import(workspace, MESSAGES, "orgfacts")
    with workspace.registry() as reg:
        add_fake_model(reg, "base")
        add_adapter(reg, "legal", dataset="orgfacts", dataset_version=1)
    page = _page(qtbot, workspace)
    question = page.delete_question("orgfacts", 1)
    assert question.startswith("Delete dataset orgfacts version 1 (80 rows)?")
    assert "Adapters were made from it: legal@1" in question
    assert "Adapters" not in page.delete_question("orgfacts", 2)
    assert page.delete_question("orgfacts", None).startswith("Delete dataset orgfacts (2 versions")
    task = page.delete("orgfacts", 1)
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass
    assert page.status.text() == "Deleted orgfacts@1."
    assert list(page._items) == ["orgfacts@2"]
    assert not (workspace.ws.home / first["path"]).exists()
    with workspace.registry() as reg:
        lineage = reg.adapters.lineage("legal@1")
        assert lineage["dataset"] is not None
        assert lineage["dataset"]["sha256"] == first["sha256"]
    task = page.delete("orgfacts", None)
    assert task is not None
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        pass
    assert page.names() == []
    assert page.tree.topLevelItemCount() == 0
    assert not (workspace.ws.home / second["path"]).exists()
    assert page.status.text() == "No datasets yet: import a file, or drop one on this page."


def _chat_rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(24):
        prompt = " ".join(["clause"] * (i * 4 + 1)) + f" number {i}?"
        answer = "It holds. " * (1 + i % 5)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def _independent(tiny_llama: Path, rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(tokens, prompt tokens) per row, straight from the tokenizer and its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama, local_files_only=True)
    out = []
    for row in rows:
        messages = row["messages"]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(
            messages[:1], tokenize=False, add_generation_prompt=True
        )
        n = len(tokenizer(full, add_special_tokens=False)["input_ids"])
        p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        out.append((n, p))
    return out


def test_token_histogram_matches_an_independent_count_through_a_lock(
    qtbot: QtBot, workspace: UnlockedWorkspace, tmp_path: Path, tiny_llama: Path
) -> None:
    rows = _chat_rows()
    source = tmp_path / "clauses.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    version = _import(workspace, source, "clauses")
    with workspace.registry() as reg:
        import_model(workspace.ws, reg, tiny_llama, "tiny")
    window = MainWindow(workspace.ws.home, workspace=workspace)
    qtbot.addWidget(window)
    window.show()
    page = window.datasets_page
    page.select("clauses@1")
    panel = page.tokens
    assert panel.model == "tiny"
    qtbot.waitUntil(lambda: "Not counted yet against tiny" in panel.status.text(), timeout=WAIT_MS)
    job = panel.count()
    assert job is not None
    assert panel.busy
    vault = workspace.vault

    # Lock while the child works: the key goes, the page forgets, the job goes on.
    window.lock_now()
    qtbot.waitUntil(lambda: workspace.locked, timeout=WAIT_MS)
    assert vault.locked
    assert vault._key is None
    assert page.rows_view.rows.rowCount() == 0
    assert page.tree.topLevelItemCount() == 0
    assert all(label.text() == "" for label in page.detail_labels.values())
    assert panel.histogram.stats is None
    assert panel.model_box.count() == 0
    assert window.locker is not None
    assert window.locker.stack.currentWidget() is window.locker.screen
    with qtbot.waitSignal(job.done, timeout=JOB_WAIT_MS):
        pass
    assert job.result is not None
    assert job.result["examples"] == len(rows)
    assert panel.histogram.stats is None  # nothing drawn while locked

    screen = window.locker.screen
    screen.passphrase.setText("not the passphrase")
    screen.submit()
    assert screen.task is not None
    with qtbot.waitSignal(screen.task.done, timeout=WAIT_MS):
        pass
    assert screen.error.text().startswith(f"wrong passphrase for workspace {workspace.ws.home}")
    assert workspace.locked
    screen.passphrase.setText(PASSPHRASE)
    with qtbot.waitSignal(window.locker.unlocked, timeout=WAIT_MS):
        screen.submit()
    assert not workspace.locked
    qtbot.waitUntil(lambda: panel.histogram.stats is not None, timeout=WAIT_MS)

    expected = _independent(tiny_llama, datasets.load_rows(workspace.vault, version))
    lengths = sorted(n for n, _ in expected)
    prompts = sorted(p for _, p in expected)
    for limit in (lengths[len(lengths) // 2], prompts[len(prompts) // 2], lengths[-1] + 1):
        panel.max_length.setValue(limit)
        cut = panel.histogram.truncation
        assert cut is not None
        assert cut.max_seq_length == limit
        assert cut.truncated == sum(1 for n, _ in expected if n > limit)
        assert cut.answer_lost == sum(1 for _, p in expected if p >= limit)
        kept, beyond = panel.histogram.counts
        assert sum(beyond) == cut.truncated
        assert sum(kept) + sum(beyond) == len(rows)
        assert f"{cut.truncated:,} of {len(rows)} examples" in panel.histogram.caption.text()
        assert panel.histogram.line.value() == limit
    assert prompts[len(prompts) // 2]
    assert cut.examples > 0
    with workspace.registry() as reg:
        assert token_cache.cached_token_stats(workspace.vault, reg, "clauses@1", "tiny") is not None
    window.close()


def test_the_page_offers_nothing_while_locked(qtbot: QtBot, workspace: UnlockedWorkspace) -> None:
    _import(workspace, ORGFACTS, "orgfacts")
    workspace.lock()
    page = _page(qtbot, workspace)
    assert page.tree.topLevelItemCount() == 0
    assert page.open_wizard() is None
    assert not page.import_button.isEnabled()

"""The import wizard over a real workspace: every format, a column mapping, Parquet, bad rows,
Cancel and Skip, and the bad input a person may drop on the page."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from pytestqt.qtbot import QtBot

from appliance import datasets
from appliance.datasets.problems import DatasetValidationError
from appliance.registry.rows import DatasetVersionRow
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from appliance.workspace import Workspace
from gui.pages.datasets import DatasetsPage
from gui.widgets.import_wizard import ImportWizard
from tests.helpers.cli import CliRunner

DATA = Path(__file__).resolve().parents[1] / "data" / "datasets"
PASSPHRASE = "wizard passphrase for tests"
WAIT_MS = 60_000
MAPPING = {"instruction": "question", "input": "context", "output": "answer"}


@pytest.fixture
def workspace(ws: Workspace) -> UnlockedWorkspace:
    return UnlockedWorkspace(Vault.create(ws, PASSPHRASE, "alice", target_s=0))


def _stored_files(ws: Workspace) -> list[Path]:
    return sorted(p for p in ws.datasets_dir.rglob("*") if p.is_file())


def _versions(workspace: UnlockedWorkspace) -> list[str]:
    with workspace.registry() as reg:
        return [f"{v['name']}@{v['version']}" for v in reg.datasets.versions(include_deleted=True)]


def _open(
    qtbot: QtBot, workspace: UnlockedWorkspace, path: Path, existing: list[str] | None = None
) -> ImportWizard:
    wizard = ImportWizard(workspace, None, existing or [])
    qtbot.addWidget(wizard)
    wizard.show()
    wizard.set_path(path)
    _settle(qtbot, wizard)
    return wizard


def _settle(qtbot: QtBot, wizard: ImportWizard) -> None:
    qtbot.waitUntil(lambda: not wizard.busy, timeout=WAIT_MS)


def _import(qtbot: QtBot, wizard: ImportWizard, name: str) -> DatasetVersionRow:
    wizard.new_radio.setChecked(True)
    wizard.name_edit.setText(name)
    assert wizard.import_button.isEnabled(), wizard.error_label.text()
    with qtbot.waitSignal(wizard.stored, timeout=WAIT_MS) as blocker:
        qtbot.mouseClick(wizard.import_button, Qt.MouseButton.LeftButton)
    version = blocker.args[0]
    assert not wizard.isVisible()
    return version


@pytest.fixture(scope="module")
def renamed_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpaca.csv with spreadsheet column names: question, context, answer."""
    with open(DATA / "valid" / "alpaca.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    path = tmp_path_factory.mktemp("mapped") / "faq.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "context", "answer"])
        for row in rows:
            writer.writerow([row["instruction"], row["input"], row["output"]])
    return path


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with open(DATA / "valid" / "alpaca.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    path = tmp_path_factory.mktemp("pq") / "alpaca.parquet"
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), path)
    return path


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("alpaca.csv", "alpaca"),
        ("alpaca.jsonl", "alpaca"),
        ("completion.tsv", "completion"),
        ("messages.jsonl", "messages"),
        ("sharegpt.json", "sharegpt"),
        ("text.jsonl", "text"),
        ("text.txt", "text"),
    ],
)
def test_each_format_stores_what_the_cli_stores(
    qtbot: QtBot, workspace: UnlockedWorkspace, name: str, fmt: str
) -> None:
    path = DATA / "valid" / name
    wizard = _open(qtbot, workspace, path)
    assert wizard.preview is not None
    assert (wizard.preview.detected, wizard.preview.format) == (fmt, fmt)
    assert wizard.detected_label.text().startswith("Detected: ")
    assert wizard.rows_view.rows.rowCount() == len(wizard.preview.sample) > 0
    assert wizard.problem_rows() == []
    assert _stored_files(workspace.ws) == []  # reading stored nothing
    version = _import(qtbot, wizard, "wizard")
    with workspace.registry() as reg:
        cli, _ = datasets.import_file(workspace.vault, reg, path, "cli")
    assert version["sha256"] == cli["sha256"]
    assert version["format"] == fmt


def test_csv_with_a_column_mapping_equals_the_cli_with_map(
    qtbot: QtBot, workspace: UnlockedWorkspace, renamed_csv: Path, cli: CliRunner
) -> None:
    wizard = _open(qtbot, workspace, renamed_csv)
    preview = wizard.preview
    assert preview is not None
    assert preview.detected is None
    assert "cannot tell the format from its fields" in wizard.error_label.text()
    assert not wizard.import_button.isEnabled()
    wizard.set_format("alpaca")
    _settle(qtbot, wizard)
    assert wizard.mapping_group.isVisible()
    assert set(wizard.mapping_boxes) == {"instruction", "input", "output", "system"}
    wizard.set_mapping(MAPPING)
    _settle(qtbot, wizard)
    assert wizard.preview is not None
    assert wizard.preview.format == "alpaca"
    assert wizard.preview.problems == []
    version = _import(qtbot, wizard, "faq")
    maps = [f"--map={role}={column}" for role, column in MAPPING.items()]
    result = cli(
        "dataset", "import", str(renamed_csv), "--name", "faq-cli", "--format", "alpaca",
        *maps, "--json", env={"APPLIANCE_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sha256"] == version["sha256"]


def test_parquet_stores_what_the_core_import_stores(
    qtbot: QtBot, workspace: UnlockedWorkspace, parquet_file: Path
) -> None:
    wizard = _open(qtbot, workspace, parquet_file)
    assert wizard.preview is not None
    assert wizard.preview.source_kind == "parquet"
    assert wizard.mapping_group.isVisible()  # a table: its columns may be mapped
    version = _import(qtbot, wizard, "pq")
    with workspace.registry() as reg:
        cli, _ = datasets.import_file(workspace.vault, reg, parquet_file, "pq-cli")
    assert version["sha256"] == cli["sha256"]


MALFORMED = [
    '{"instruction": "What is A?", "output": "A."}',
    '{"instruction": "What is B?", "output": "B."}',
    '{"instruction": "broken", ',
    '{"instruction": "What is C?", "output": "C."}',
    '{"instruction": "no answer"}',
    '{"instruction": "What is D?", "output": 4}',
    '{"instruction": "What is E?", "output": "E."}',
]


@pytest.fixture
def malformed(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(MALFORMED) + "\n", encoding="utf-8")
    return path


def test_bad_rows_are_reported_then_cancel_stores_nothing(
    qtbot: QtBot, workspace: UnlockedWorkspace, malformed: Path
) -> None:
    wizard = _open(qtbot, workspace, malformed)
    with pytest.raises(DatasetValidationError) as cli_error:
        datasets.prepare(malformed)
    expected = [(p.file, str(p.line), p.field or "", p.problem) for p in cli_error.value.problems]
    assert [int(line) for _, line, _, _ in expected] == [3, 5, 6]
    assert wizard.problem_rows() == expected
    assert wizard.tabs.currentIndex() == 1
    assert wizard.tabs.tabText(1) == "Problems (3)"
    assert "4 valid and 3 invalid" in wizard.summary.text()
    assert wizard.skip_box.isVisible()
    assert not wizard.skip_box.isChecked()
    assert not wizard.import_button.isEnabled()
    assert wizard.store() is None  # even called directly: the report must be answered first
    assert "3 invalid rows" in wizard.error_label.text()
    qtbot.mouseClick(wizard.cancel_button, Qt.MouseButton.LeftButton)
    assert not wizard.isVisible()
    assert _versions(workspace) == []
    assert _stored_files(workspace.ws) == []


def test_skip_stores_the_good_rows(
    qtbot: QtBot, workspace: UnlockedWorkspace, malformed: Path
) -> None:
    wizard = _open(qtbot, workspace, malformed)
    wizard.skip_box.setChecked(True)
    version = _import(qtbot, wizard, "mixed")
    assert (version["rows"], version["skipped_rows"]) == (4, 3)
    assert [p["line"] for p in version["skipped_detail"]] == [3, 5, 6]
    rows = datasets.load_rows(workspace.vault, version)
    assert sorted(r["messages"][0]["content"] for r in rows) == [
        "What is A?", "What is B?", "What is C?", "What is E?",
    ]  # fmt: skip


def test_cancel_during_the_store_leaves_nothing(
    qtbot: QtBot, workspace: UnlockedWorkspace, tmp_path: Path
) -> None:
    path = tmp_path / "large.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(60_000):
            handle.write(json.dumps({"text": f"document {i} " + "lorem ipsum " * 20}) + "\n")
    wizard = _open(qtbot, workspace, path)
    wizard.name_edit.setText("large")
    task = wizard.store()
    assert task is not None
    assert wizard.storing
    qtbot.waitUntil(lambda: wizard.progress.format().startswith("Encrypting"), timeout=WAIT_MS)
    with qtbot.waitSignal(task.done, timeout=WAIT_MS):
        qtbot.mouseClick(wizard.cancel_button, Qt.MouseButton.LeftButton)
    assert wizard.status.text() == "Import cancelled; nothing was stored."
    assert wizard.isVisible()  # the user may change their mind and import after all
    assert _versions(workspace) == []
    assert _stored_files(workspace.ws) == []
    assert list(workspace.ws.tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("legal/qa", "invalid dataset name 'legal/qa'"),
        ("..", "invalid dataset name '..'"),
        ("../up", "invalid dataset name '../up'"),
        ("", "invalid dataset name ''"),
        ("notes", "a dataset named 'notes' exists already; choose 'New version of'"),
    ],
)
def test_bad_names_are_refused_before_anything_is_stored(
    qtbot: QtBot, workspace: UnlockedWorkspace, name: str, message: str
) -> None:
    path = DATA / "valid" / "alpaca.jsonl"
    with workspace.registry() as reg:
        datasets.import_file(workspace.vault, reg, path, "notes")
    before = (_versions(workspace), _stored_files(workspace.ws))
    wizard = _open(qtbot, workspace, path, existing=["notes"])
    assert wizard.version_radio.isEnabled()
    wizard.new_radio.setChecked(True)
    wizard.name_edit.setText(name)
    assert wizard.store() is None
    assert wizard.error_label.text().startswith(message)
    assert (_versions(workspace), _stored_files(workspace.ws)) == before
    # The way to add to an existing dataset: a new version of it.
    wizard.version_radio.setChecked(True)
    with qtbot.waitSignal(wizard.stored, timeout=WAIT_MS) as blocker:
        wizard.store()
    assert (blocker.args[0]["name"], blocker.args[0]["version"]) == ("notes", 2)


def _drop(qtbot: QtBot, page: DatasetsPage, path: Path) -> ImportWizard:
    """Drag ``path`` onto the page and drop it, as a file manager would."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    pos = QPointF(page.width() / 2, page.height() / 2)
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    enter = QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, buttons, mods)
    page.dragEnterEvent(enter)
    assert enter.isAccepted()
    page.dropEvent(QDropEvent(pos, Qt.DropAction.CopyAction, mime, buttons, mods))
    wizard = page.wizard
    assert wizard is not None
    _settle(qtbot, wizard)
    return wizard


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    long_line = tmp_path / "long.jsonl"
    long_line.write_text(json.dumps({"text": "word " * 10_000_000}) + "\n", encoding="utf-8")
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"text": "caf\xe9"}\n')
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    mapped = tmp_path / "partial.csv"
    mapped.write_text(
        "question,answer,source\nWhat is A?,It is A.,x\nWhat is B?\nWhat is C?,,y\n",
        encoding="utf-8",
    )
    return {
        "empty": (empty, "empty.jsonl: the file is empty"),
        "long": (long_line, "over the 1 MiB limit"),
        "utf8": (latin, "not valid UTF-8 (byte 0xE9 at column 14)"),
        "folder": (folder, f"{folder} is a folder, not a regular file"),
        "fifo": (fifo, f"{fifo} is a FIFO (named pipe), not a regular file"),
        "mapped": (mapped, "1 cell, but the header has 3"),
    }


@pytest.mark.parametrize("case", ["empty", "long", "utf8", "folder", "fifo", "mapped"])
def test_bad_input_dropped_on_the_page_is_explained_and_nothing_stored(
    qtbot: QtBot, workspace: UnlockedWorkspace, tmp_path: Path, case: str
) -> None:
    path, message = _bad_inputs(tmp_path)[case]
    page = DatasetsPage(workspace)
    qtbot.addWidget(page)
    page.show()
    wizard = _drop(qtbot, page, path)
    if case == "mapped":
        wizard.set_format("alpaca")
        _settle(qtbot, wizard)
        wizard.set_mapping({"instruction": "question", "output": "answer"})
        _settle(qtbot, wizard)
        rows = wizard.problem_rows()
        assert [r[1] for r in rows] == ["3", "4"]
        assert rows[1][2:] == ("answer", "empty assistant turn (output)")
        shown = " ".join(str(r) for r in rows)
        assert not wizard.import_button.isEnabled()
    else:
        shown = wizard.error_label.text() + " ".join(" ".join(r) for r in wizard.problem_rows())
        if case in ("long", "utf8"):
            # The file is read; the bad line is a problem row that blocks storing.
            assert wizard.preview is not None
            assert not wizard.preview.can_store
        else:
            assert wizard.preview is None  # nothing readable to preview
        assert not wizard.import_button.isEnabled()
    assert message in shown
    assert "Traceback" not in shown
    wizard.name_edit.setText("bad")
    assert wizard.store() is None
    assert _versions(workspace) == []
    assert _stored_files(workspace.ws) == []

"""The Playground page over a real workspace: a real ``generate`` child on the tiny model.

A generation child costs 15-30 s here, so one test drives one child through everything a
person does in a chat session: answers streaming side by side, other adapters chosen (same
process), a conversation saved as a test row, refusals, Stop, Reset, and the lock.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from appliance import datasets, workspace
from appliance.datasets.canonical import content
from appliance.registry import Registry
from appliance.unlocked import UnlockedWorkspace
from appliance.vault import Vault
from gui.pages.playground import PlaygroundPage
from tests.helpers.adapters import make_adapter, open_store

QUESTION = "What is 3 plus one?"
JOB_WAIT_MS = 180_000


@dataclass
class Store:
    vault: Vault
    one: str
    two: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Store:
    """Base model ``tiny`` and adapters legal@1 and legal@2 of it."""
    ws, _ = workspace.init(tmp_path_factory.mktemp("playground") / "ws")
    vault, reg = open_store(ws)
    with reg:
        one = make_adapter(vault, reg, tiny_llama, adapter_name="legal", seed=1)
        two = make_adapter(vault, reg, tiny_llama, adapter_name="legal", seed=2, r=8)
    return Store(vault, one, two)


def _page(qtbot: QtBot, workspace: UnlockedWorkspace) -> PlaygroundPage:
    page = PlaygroundPage(workspace)
    qtbot.addWidget(page)
    page.resize(1300, 800)
    page.show()
    return page


def _ask(qtbot: QtBot, page: PlaygroundPage, text: str) -> None:
    """Type the question and press Enter, as a person would; wait for every answer."""
    page.prompt.setFocus()
    qtbot.keyClicks(page.prompt, text)
    qtbot.keyClick(page.prompt, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not page.busy, timeout=JOB_WAIT_MS)


def test_a_session_side_by_side(qtbot: QtBot, store: Store) -> None:
    workspace = UnlockedWorkspace(store.vault)
    page = _page(qtbot, workspace)
    assert page.base_box.currentText() == "tiny"
    page.choose("tiny", store.one, None)
    assert page.columns["A"].heading.text() == f"A · {store.one}"
    assert not page.columns["B"].isEnabled()
    page.settings_panel.max_new_tokens.setValue(8)

    # Shift+Enter is a new line, Enter sends.
    page.prompt.setFocus()
    qtbot.keyClicks(page.prompt, "What is 3")
    qtbot.keyClick(page.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    assert page.prompt.toPlainText() == "What is 3\n"
    assert not page.busy
    page.prompt.clear()

    # Enter sends; record the child's events as the page receives them.
    events: list[tuple[str, str, Any]] = []
    qtbot.keyClicks(page.prompt, QUESTION)
    qtbot.keyClick(page.prompt, Qt.Key.Key_Return)
    assert page.busy
    assert page.prompt.toPlainText() == ""
    qtbot.waitUntil(lambda: page.chat is not None, timeout=JOB_WAIT_MS)
    assert page.chat is not None
    page.chat.token.connect(lambda ident, text: events.append(("token", ident, text)))
    page.chat.answered.connect(lambda ident, data: events.append(("answer", ident, data)))
    qtbot.waitUntil(lambda: not page.busy, timeout=JOB_WAIT_MS)
    pid = page.chat.pid
    assert pid > 0
    answers = [data for kind, _, data in events if kind == "answer"]
    assert [a["adapter"] for a in answers] == [None, store.one]
    first = {key: page.histories[key] for key in ("base", "A")}
    assert page.histories["B"] == []
    for key, (kind, ident, answer) in zip(
        ("base", "A"), [e for e in events if e[0] == "answer"], strict=True
    ):
        column = page.columns[key]
        # Its tokens came before it, in order, and went into its own column only.
        before = events[: events.index((kind, ident, answer))]
        pieces = [text for k, i, text in before if k == "token" and i == ident]
        assert pieces
        assert column.pieces == pieces
        assert "".join(pieces) == answer["text"] == column.answer_text
        assert first[key] == [
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": answer["text"]},
        ]
        assert column.figures.text().startswith("8 tokens · ")
        assert "tokens/s · hit the token limit" in column.figures.text()
    assert len(page.columns["base"].pieces) > 1  # streamed, not all at once
    assert first["base"][-1] != first["A"][-1]  # the adapter changes the answer

    # Other versions of the same base: loaded into the same process, no restart.
    page.choose("tiny", store.two, store.one)
    events.clear()
    _ask(qtbot, page, "And 4 plus one?")
    assert page.chat is not None
    assert page.chat.pid == pid
    answers = [data for kind, _, data in events if kind == "answer"]
    assert [a["adapter"] for a in answers] == [None, store.two, store.one]
    for answer, key in zip(answers, ("base", "A", "B"), strict=True):
        assert page.columns[key].answer_text == answer["text"]
        assert page.histories[key][-1]["content"] == answer["text"]
    assert len(page.histories["A"]) == 4  # A kept its side of the conversation
    assert len(page.histories["B"]) == 2

    # Save column A's conversation as a test row, the last answer corrected.
    dialog = page.ask_save()
    assert dialog is not None
    dialog.column_box.setCurrentText(page.columns["A"].heading.text())
    dialog.dataset_box.setCurrentText("golden")
    assert dialog.where.text() == "A new dataset golden with this row."
    dialog.expected.setPlainText("Five.")
    with qtbot.waitSignal(page.saved, timeout=30_000) as saved:
        dialog.accept()
    version = saved.args[0]
    expected = [*page.histories["A"][:-1], {"role": "assistant", "content": "Five."}]
    rows = datasets.load_rows(store.vault, version)
    assert [content(r) for r in rows] == [{"messages": expected}]
    assert "Saved as a row of golden@1 (1 rows)" in page.status.text()

    # Bad input: said in the page; the chat session goes on.
    assert not page.send()
    assert page.status.text() == "The prompt is empty: type a question first."
    _ask(qtbot, page, "one two three four " * 200)
    for key in ("base", "A", "B"):
        assert "and the model's context holds" in page.columns[key].transcript()
    assert "the prompt is" in page.status.text()
    assert len(page.histories["A"]) == 4  # a refused question is not part of the conversation

    # Stop ends the answer being generated and skips the columns not asked yet.
    page.settings_panel.max_new_tokens.setValue(400)
    page.prompt.setPlainText("Tell me a long story.")
    assert page.send()
    qtbot.waitUntil(lambda: len(page.columns["base"].pieces) >= 2, timeout=JOB_WAIT_MS)
    page.stop()
    qtbot.waitUntil(lambda: not page.busy, timeout=JOB_WAIT_MS)
    assert page.columns["base"].figures.text().endswith("· stopped")
    stopped = [data for kind, _, data in events if kind == "answer"][-1]
    assert stopped["finish"] == "stopped"
    assert stopped["tokens"] < 400
    for key in ("A", "B"):
        assert page.columns[key].transcript().endswith("Not asked: stopped.")
    assert page.chat is not None
    assert page.chat.pid == pid

    # Reset forgets the conversation, the model stays loaded.
    page.reset()
    assert page.histories == {"base": [], "A": [], "B": []}
    assert all(c.transcript() == "" for c in page.columns.values())
    assert page.chat is not None
    assert page.chat.pid == pid

    # Locking ends the model process and forgets what was shown.
    _ask(qtbot, page, QUESTION)
    chat = page.chat
    ended: list[str] = []
    chat.ended.connect(ended.append)
    page.prompt.setPlainText("half typed")
    page.on_lock()
    qtbot.waitUntil(lambda: bool(ended), timeout=30_000)
    assert page.chat is None
    assert all(c.transcript() == "" for c in page.columns.values())
    assert page.prompt.toPlainText() == ""
    assert page.base_box.count() == 0
    page.on_unlock()
    assert page.base_box.currentText() == "tiny"


def test_an_adapter_whose_base_model_was_deleted_is_refused_in_the_page(
    qtbot: QtBot, tmp_path: Path, tiny_llama: Path
) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    vault, reg = open_store(ws)
    with reg:
        ref = make_adapter(vault, reg, tiny_llama)
    page = _page(qtbot, UnlockedWorkspace(vault))
    page.choose("tiny", ref, None)
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        shutil.rmtree(ws.home / reg.models.get("tiny")["path"])
        reg.conn.execute("UPDATE base_models SET deleted_at = 'now' WHERE name = 'tiny'")
    page.prompt.setPlainText(QUESTION)
    assert page.send()
    qtbot.waitUntil(lambda: not page.busy, timeout=30_000)
    message = "trained on base model 'tiny', which was deleted from the workspace"
    assert message in page.status.text()
    assert message in page.columns["A"].transcript()
    assert page.chat is None

"""Playground: ask the base model and up to two adapter versions the same questions, side by side.

The model runs in one ``generate`` job (:class:`~gui.chat.ChatSession`, driven by
:class:`~gui.side_by_side.SideBySide`): the base model is loaded once with the chosen adapters
beside it; choosing other versions of the same base loads them into the running child (a
``load`` command), so only a change of base model starts a new one. A question is asked of
each column in turn (base, A, B), each answer streams into its column, and each column keeps
its own side of the conversation. Stop ends the answer being generated and skips the columns
not asked yet. Generation settings sit in the side panel, with an evaluation of the chosen
adapters on a dataset version (an ``eval`` job).

Locking the window ends the child (it holds decrypted adapters and the conversation, and a
locked window takes no questions) and forgets the conversation; an evaluation job started
here ends too (it holds decrypted adapters and rows; cancelled, it stores nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from appliance.datasets.conversations import add_conversations
from appliance.errors import ApplianceError
from appliance.progress import Progress
from appliance.unlocked import UnlockedWorkspace
from gui.chat import ChatSession
from gui.pages.base import Page
from gui.side_by_side import Conversation, SideBySide
from gui.style import ERROR_STYLE
from gui.tasks import Task
from gui.widgets.answer_column import AnswerColumn
from gui.widgets.eval_runner import EvalRunner
from gui.widgets.generation_settings import GenerationSettingsPanel
from gui.widgets.prompt_box import PromptBox
from gui.widgets.save_conversation import SaveConversationDialog

if TYPE_CHECKING:
    from appliance.registry.rows import AdapterVersionRow, DatasetVersionRow

COLUMNS = ("base", "A", "B")


class PlaygroundPage(Page):
    """Side-by-side chat with a base model and adapter versions of it."""

    title = "Playground"
    purpose = (
        "Ask the base model and up to two adapter versions the same questions and compare the "
        "answers as they stream in. The model stays loaded between questions; nothing of the "
        "conversation is written to disk unless you save it as a test row."
    )
    saved = Signal(object)
    """A conversation was stored: the new dataset version's registry row."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.save_task: Task | None = None
        self._locking = False
        self.side: SideBySide | None = None
        if workspace is not None:
            self.side = SideBySide(workspace, COLUMNS, self)

        pickers = QHBoxLayout()
        self.base_box = QComboBox()
        self.base_box.setObjectName("baseModel")
        self.base_box.setMinimumContentsLength(14)
        self.adapter_boxes = {"A": QComboBox(), "B": QComboBox()}
        pickers.addWidget(QLabel("Base model:"))
        pickers.addWidget(self.base_box)
        for key, box in self.adapter_boxes.items():
            box.setObjectName(f"adapter{key}")
            box.setMinimumContentsLength(16)
            pickers.addSpacing(12)
            pickers.addWidget(QLabel(f"Adapter {key}:"))
            pickers.addWidget(box)
        pickers.addStretch(1)
        self.body.addLayout(pickers)
        self.status = QLabel()
        self.status.setObjectName("playgroundStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.body.addWidget(self.status)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        answers = QSplitter(Qt.Orientation.Horizontal)
        self.columns = {
            "base": AnswerColumn("Base"),
            "A": AnswerColumn("A"),
            "B": AnswerColumn("B"),
        }
        for column in self.columns.values():
            answers.addWidget(column)
        splitter.addWidget(answers)
        panel = QWidget()
        panel_layout = QVBoxLayout(panel)
        panel_layout.setContentsMargins(6, 0, 0, 0)
        self.settings_panel = GenerationSettingsPanel()
        panel_layout.addWidget(self.settings_panel)
        self.eval_runner = EvalRunner(workspace)
        panel_layout.addWidget(self.eval_runner)
        panel_layout.addStretch(1)
        panel.setMaximumWidth(340)
        splitter.addWidget(panel)
        splitter.setStretchFactor(0, 1)
        self.body.addWidget(splitter, 1)

        prompt_row = QHBoxLayout()
        self.prompt = PromptBox()
        self.prompt.submitted.connect(self.send)
        prompt_row.addWidget(self.prompt, 1)
        buttons = QVBoxLayout()
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.reset_button = QPushButton("Reset conversation")
        self.reset_button.clicked.connect(self.reset)
        self.save_button = QPushButton("Save as test row…")
        self.save_button.clicked.connect(self.ask_save)
        for button in (self.send_button, self.stop_button, self.reset_button, self.save_button):
            buttons.addWidget(button)
        prompt_row.addLayout(buttons)
        self.body.addLayout(prompt_row)
        outer = self.layout()
        if isinstance(outer, QVBoxLayout):  # the splitter takes the height, not the stretch
            outer.setStretch(outer.count() - 1, 0)
            outer.setStretchFactor(self.body, 1)

        self.base_box.currentTextChanged.connect(self._base_changed)
        for key, box in self.adapter_boxes.items():
            box.currentIndexChanged.connect(lambda _i, key=key: self._adapter_changed(key))
        if self.side is not None:
            chats = self.side
            chats.started.connect(lambda key: self.columns[key].begin_answer())
            chats.piece.connect(lambda key, text: self.columns[key].append(text))
            chats.answered.connect(lambda key, answer: self.columns[key].finish(answer))
            chats.refused.connect(lambda key, message: self.columns[key].refuse(message))
            chats.skipped.connect(lambda key: self.columns[key].note("Not asked: stopped."))
            chats.said.connect(lambda text, error: self._say(text, error=error))
            chats.changed.connect(self._update_buttons)
        self.refresh()

    # -- choices ------------------------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        return self.workspace is not None and not self.workspace.locked and not self._locking

    @Slot()
    def refresh(self) -> None:
        """List the base models (and their adapters) from the registry (milliseconds)."""
        current = self.base_box.currentText()
        self.base_box.blockSignals(True)
        self.base_box.clear()
        if self.unlocked:
            assert self.workspace is not None
            with self.workspace.registry() as reg:
                self.base_box.addItems([m["name"] for m in reg.models.all()])
            if current:
                self.base_box.setCurrentText(current)
        self.base_box.blockSignals(False)
        self._fill_adapters()
        self.eval_runner.refresh()
        if self.workspace is None:
            self._say("Unlock the workspace to use the Playground.")
        elif self.unlocked and self.base_box.count() == 0:
            self._say("Import a base model on the Models page to chat with it.")
        self._update_buttons()

    def _fill_adapters(self) -> None:
        base = self.base_box.currentText()
        rows: list[AdapterVersionRow] = []
        if base and self.unlocked:
            assert self.workspace is not None
            with self.workspace.registry() as reg:
                rows = reg.adapters.from_base_model(base)
        for box in self.adapter_boxes.values():
            chosen = box.currentData()
            box.blockSignals(True)
            box.clear()
            box.addItem("(none)", None)
            for row in reversed(rows):  # newest first
                tags = f" ({', '.join(row['tags'])})" if row["tags"] else ""
                box.addItem(f"{row['ref']}{tags}", row["ref"])
            index = box.findData(chosen)
            box.setCurrentIndex(max(index, 0))
            box.blockSignals(False)
        self._show_models()

    def choose(self, base: str, a: str | None = None, b: str | None = None) -> None:
        """Choose the base model and adapters A and B (``NAME@N`` or None), as a user would."""
        self.base_box.setCurrentText(base)
        for key, ref in (("A", a), ("B", b)):
            box = self.adapter_boxes[key]
            index = box.findData(ref)
            if index < 0:
                raise ValueError(f"adapter {ref} is not offered for base model {base}")
            box.setCurrentIndex(index)

    def adapter(self, key: str) -> str | None:
        """The adapter version column ``key`` answers with (None: the base model, or none)."""
        box = self.adapter_boxes.get(key)
        value = box.currentData() if box is not None else None
        return str(value) if value else None

    def _show_models(self) -> None:
        base = self.base_box.currentText() or None
        self.columns["base"].set_model(base, empty="no base model")
        for key in ("A", "B"):
            self.columns[key].set_model(self.adapter(key))
        # B shows only when chosen (or holding answers), so two columns get the width.
        self.columns["B"].setVisible(bool(self.adapter("B") or self.histories["B"]))
        self.eval_runner.set_targets([r for r in (self.adapter("A"), self.adapter("B")) if r])

    @Slot(str)
    def _base_changed(self, _base: str) -> None:
        # Another base model: another process, and a conversation that starts afresh.
        if self.side is not None:
            self.side.end()
        self.reset()
        self._fill_adapters()

    def _adapter_changed(self, key: str) -> None:
        self._show_models()
        ref = self.adapter(key)
        if self.histories[key] and ref:
            self.columns[key].note(f"Now answering with {ref}.")
        self._update_buttons()

    # -- asking ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A question is being answered or waits to be sent."""
        return self.side is not None and self.side.busy

    @property
    def chat(self) -> ChatSession | None:
        """The model process (None before the first question and after a lock)."""
        return self.side.chat if self.side is not None else None

    @property
    def histories(self) -> dict[str, Conversation]:
        return self.side.histories if self.side is not None else {c: [] for c in COLUMNS}

    @Slot()
    def send(self) -> bool:
        """Ask the prompt of every chosen column; False when refused (the reason is shown)."""
        if self.side is None or self.busy or not self.unlocked:
            return False
        text = self.prompt.toPlainText()
        if not text.strip():
            self._say("The prompt is empty: type a question first.", error=True)
            return False
        base = self.base_box.currentText()
        if not base:
            self._say("Choose a base model first (import one on the Models page).", error=True)
            return False
        try:
            settings = self.settings_panel.settings()
        except ApplianceError as exc:
            self._say(str(exc), error=True)
            return False
        self.prompt.clear()
        targets = {k: self.adapter(k) for k in COLUMNS if k == "base" or self.adapter(k)}
        for key in targets:
            self.columns[key].add_question(text)
        self.side.ask(base, targets, text, settings)
        return True

    @Slot()
    def stop(self) -> None:
        """End the answer being generated; the columns not asked yet are skipped."""
        if self.side is not None:
            self.side.stop()

    @Slot()
    def reset(self) -> None:
        """Forget the conversation (the model stays loaded)."""
        if self.side is not None:
            self.side.reset()
        for column in self.columns.values():
            column.clear()
        self._show_models()

    # -- saving a test row -------------------------------------------------------------------

    @Slot()
    def ask_save(self) -> SaveConversationDialog | None:
        """Open the dialog that saves a conversation as a test row (None: nothing to save)."""
        side = self.side
        answered = {
            self.columns[k].heading.text(): side.conversation(k)
            for k in COLUMNS
            if side is not None and side.histories[k]
        }
        if not answered or not self.unlocked:
            self._say("Nothing to save yet: ask a question first.", error=True)
            return None
        assert self.workspace is not None
        with self.workspace.registry() as reg:
            names = sorted({v["name"] for v in reg.datasets.versions() if v["kind"] == "chat"})
        dialog = SaveConversationDialog(answered, names, self)
        dialog.accepted.connect(
            lambda: self.save_conversation(dialog.dataset, dialog.conversation())
        )
        dialog.open()
        return dialog

    def save_conversation(self, dataset: str, conversation: Conversation) -> Task | None:
        """Store ``conversation`` as a row of ``dataset`` (a new version, or a new dataset)."""
        if not self.unlocked or (self.save_task is not None and self.save_task.running):
            return None
        assert self.workspace is not None
        workspace = self.workspace

        def work(_progress: Progress) -> DatasetVersionRow:
            with workspace.registry() as reg:
                return add_conversations(workspace.vault, reg, dataset, [conversation])

        self.save_task = Task("saving a test row", work, self)
        self.save_task.succeeded.connect(self._saved)
        self.save_task.failed.connect(lambda message: self._say(message, error=True))
        self._say(f"Saving the conversation into {dataset}…")
        self.save_task.start()
        return self.save_task

    @Slot(object)
    def _saved(self, version: dict[str, Any]) -> None:
        self.eval_runner.refresh()
        self.saved.emit(version)
        if self.unlocked:
            ref = f"{version['name']}@{version['version']}"
            self._say(
                f"Saved as a row of {ref} ({version['rows']} rows). To gate an adapter's "
                f"production tag on it: appliance adapter golden NAME --dataset {ref}"
            )

    # -- page hooks --------------------------------------------------------------------------

    def on_lock(self) -> None:
        self._locking = True
        if self.side is not None:
            self.side.end()
        self.reset()
        self.prompt.clear()
        self.settings_panel.system_prompt.clear()
        self.base_box.blockSignals(True)
        self.base_box.clear()
        self.base_box.blockSignals(False)
        for box in self.adapter_boxes.values():
            box.clear()
        self.eval_runner.on_lock()
        self.status.clear()

    def on_unlock(self) -> None:
        self._locking = False
        self.refresh()
        self.eval_runner.on_unlock()

    def vault_tasks(self) -> list[Task]:
        tasks = [t for t in (self.save_task,) if t is not None and t.running]
        if self.side is not None:
            tasks += self.side.tasks()
        return tasks + self.eval_runner.vault_tasks()

    def showEvent(self, event: Any) -> None:
        if self.unlocked and not self.busy:
            self.refresh()
        super().showEvent(event)

    def shutdown(self) -> None:
        """End the model process and a running evaluation (the window is closing)."""
        chat = self.chat
        if chat is not None:
            chat.cancel()
            chat.job.child.wait(10)
        self.eval_runner.shutdown()

    # -- plumbing ----------------------------------------------------------------------------

    def _update_buttons(self) -> None:
        busy = self.busy
        ok = self.unlocked and self.base_box.count() > 0
        self.send_button.setEnabled(ok and not busy)
        self.stop_button.setEnabled(busy)
        self.reset_button.setEnabled(ok)
        self.save_button.setEnabled(ok and not busy and any(self.histories.values()))

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setText(text)

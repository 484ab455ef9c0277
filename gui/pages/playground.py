"""Playground: ask the base model and up to two adapter versions the same questions, side by side.

The model runs in one ``generate`` job (:class:`~gui.chat.ChatSession`): the base model is
loaded once with the chosen adapters beside it; choosing other versions of the same base loads
them into the running child (a ``load`` command), so only a change of base model starts a new
one. A question is asked of each column in turn (base, A, B), each answer streams into its
column, and each column keeps its own side of the conversation. Stop ends the answer being
generated and skips the columns not asked yet.

Locking the window ends the child (it holds decrypted adapters and the conversation, and a
locked window takes no questions) and forgets the conversation; an evaluation job started
here goes on (it holds its own keys and stores its results).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

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
from appliance.generation.protocol import Generate
from appliance.generation.request import generate_request, load_command
from appliance.generation.settings import GenerationSettings
from appliance.session import Session
from gui.chat import ChatSession
from gui.pages.base import Page
from gui.tasks import Progress, Task
from gui.widgets.answer_column import AnswerColumn
from gui.widgets.eval_runner import EvalRunner
from gui.widgets.generation_settings import GenerationSettingsPanel
from gui.widgets.prompt_box import PromptBox
from gui.widgets.save_conversation import SaveConversationDialog

COLUMNS = ("base", "A", "B")
ERROR_STYLE = "color: #b00020;"
Conversation = list[dict[str, str]]


@dataclass
class Question:
    """One question to one column, waiting to be sent or being answered."""

    column: str
    command: Generate


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

    def __init__(self, session: Session | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.chat: ChatSession | None = None
        self.prepare_task: Task | None = None
        self.save_task: Task | None = None
        self.histories: dict[str, Conversation] = {c: [] for c in COLUMNS}
        self.queue: list[Question] = []
        self.current: Question | None = None
        self.last_settings = GenerationSettings()
        self._ids = itertools.count(1)
        self._loads: dict[str, list[str]] = {}
        self._locking = False

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
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(6, 0, 0, 0)
        self.settings_panel = GenerationSettingsPanel()
        side_layout.addWidget(self.settings_panel)
        self.eval_runner = EvalRunner(session)
        side_layout.addWidget(self.eval_runner)
        side_layout.addStretch(1)
        side.setMaximumWidth(340)
        splitter.addWidget(side)
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
        self.refresh()

    # -- choices ------------------------------------------------------------------------------

    @property
    def unlocked(self) -> bool:
        return self.session is not None and not self.session.locked and not self._locking

    @Slot()
    def refresh(self) -> None:
        """List the base models (and their adapters) from the registry (milliseconds)."""
        current = self.base_box.currentText()
        self.base_box.blockSignals(True)
        self.base_box.clear()
        if self.unlocked:
            assert self.session is not None
            with self.session.registry() as reg:
                self.base_box.addItems([m["name"] for m in reg.base_models()])
            if current:
                self.base_box.setCurrentText(current)
        self.base_box.blockSignals(False)
        self._fill_adapters()
        self.eval_runner.refresh()
        if self.session is None:
            self._say("Unlock the workspace to use the Playground.")
        elif self.unlocked and self.base_box.count() == 0:
            self._say("Import a base model on the Models page to chat with it.")
        self._update_buttons()

    def _fill_adapters(self) -> None:
        base = self.base_box.currentText()
        rows: list[dict[str, Any]] = []
        if base and self.unlocked:
            assert self.session is not None
            with self.session.registry() as reg:
                rows = reg.adapters_from_base_model(base)
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
        self.eval_runner.set_targets([r for r in (self.adapter("A"), self.adapter("B")) if r])

    @Slot(str)
    def _base_changed(self, _base: str) -> None:
        # Another base model: another process, and a conversation that starts afresh.
        self._end_chat()
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
        preparing = self.prepare_task is not None and self.prepare_task.running
        return preparing or self.current is not None or bool(self.queue)

    @Slot()
    def send(self) -> bool:
        """Ask the prompt of every chosen column; False when refused (the reason is shown)."""
        if self.busy or not self.unlocked:
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
        self.last_settings = settings
        self.prompt.clear()
        turn = {"role": "user", "content": text}
        for key in COLUMNS:
            if key == "base" or self.adapter(key):
                self.columns[key].add_question(text)
                command = Generate(
                    f"q{next(self._ids)}",
                    self.adapter(key),
                    [*self.histories[key], turn],
                    settings,
                )
                self.queue.append(Question(key, command))
        self._prepare(base, [r for r in (self.adapter("A"), self.adapter("B")) if r])
        self._update_buttons()
        return True

    def _prepare(self, base: str, refs: list[str]) -> None:
        """Make sure a session of ``base`` with ``refs`` loaded runs, then ask."""
        assert self.session is not None
        session, chat = self.session, self.chat
        reuse = chat is not None and chat.base == base and chat.ready
        missing = [r for r in refs if chat is None or r not in chat.adapters]
        if reuse and not missing:
            self._next()
            return
        load_id = f"l{next(self._ids)}"

        def work(progress: Progress) -> Any:
            with session.registry() as reg:
                if reuse:
                    return load_command(session.vault, reg, missing, base, load_id)[0]
                return generate_request(session.vault, reg, refs, model=base)[0]

        self._say(f"Loading {', '.join(missing)}…" if reuse else f"Starting {base}…")
        self.prepare_task = Task("preparing the model", work, self)
        self.prepare_task.succeeded.connect(
            lambda prepared: self._prepared(prepared, base, missing if reuse else None)
        )
        self.prepare_task.failed.connect(self._refuse_all)
        self.prepare_task.start()

    def _prepared(self, prepared: Any, base: str, loading: list[str] | None) -> None:
        if not self.unlocked or not self.queue:
            return
        if loading is not None and self.chat is not None:
            self._loads[prepared.id] = loading
            self.chat.load(prepared)  # answered in order: before the next question
            self._next()
            return
        self._end_chat()
        chat = ChatSession(prepared, base, self)
        chat.loaded.connect(self._loaded)
        chat.token.connect(self._token)
        chat.answered.connect(self._answered)
        chat.refused.connect(self._refused)
        chat.added.connect(lambda ident, _data: self._loads.pop(ident, None))
        chat.ended.connect(lambda message, chat=chat: self._chat_ended(chat, message))
        self.chat = chat
        self._say(f"Loading {base} in a separate process…")
        chat.start()

    @Slot(object)
    def _loaded(self, info: dict[str, Any]) -> None:
        self._say(
            f"{info['base_model']} loaded ({info['precision']} on {info['device']}, context "
            f"{info['context_length']} tokens, {info['seconds']:.0f} s)."
        )
        self._next()

    def _next(self) -> None:
        """Send the next question (one at a time, so Stop can skip those not asked)."""
        self.current = None
        if self.queue and self.chat is not None and self.chat.ready:
            self.current = self.queue.pop(0)
            self.columns[self.current.column].begin_answer()
            self.chat.ask(self.current.command)
        self._update_buttons()

    @Slot(str, str)
    def _token(self, ident: str, piece: str) -> None:
        if self.current is not None and ident == self.current.command.id:
            self.columns[self.current.column].append(piece)

    @Slot(str, object)
    def _answered(self, ident: str, answer: dict[str, Any]) -> None:
        question = self.current
        if question is None or ident != question.command.id:
            return  # an answer stopped by Reset
        self.columns[question.column].finish(answer)
        reply = {"role": "assistant", "content": str(answer.get("text", ""))}
        self.histories[question.column] = [*question.command.messages, reply]
        self._next()

    @Slot(str, str)
    def _refused(self, ident: str, message: str) -> None:
        refs = self._loads.pop(ident, None)
        if refs is not None:  # adapters that could not be loaded: their questions go too
            for skipped in [q for q in self.queue if q.command.adapter in refs]:
                self.queue.remove(skipped)
                self.columns[skipped.column].refuse(message)
            self._say(message, error=True)
            return
        question = self.current
        if question is None or ident != question.command.id:
            return
        self.columns[question.column].refuse(message)
        self._say(message, error=True)
        self._next()

    @Slot(str)
    def _refuse_all(self, message: str) -> None:
        """Nothing can be asked (the model cannot be loaded): say why in every column."""
        for question in [*([self.current] if self.current else []), *self.queue]:
            self.columns[question.column].refuse(message)
        self.queue, self.current = [], None
        self._say(message, error=True)
        self._update_buttons()

    def _chat_ended(self, chat: ChatSession, message: str) -> None:
        chat.deleteLater()
        if chat is not self.chat:
            return
        self.chat = None
        if message and self.unlocked:
            self._refuse_all(f"The model process ended: {message}")

    @Slot()
    def stop(self) -> None:
        """End the answer being generated; the columns not asked yet are skipped."""
        for question in self.queue:
            self.columns[question.column].note("Not asked: stopped.")
        self.queue = []
        if self.current is not None and self.chat is not None:
            self.chat.stop()
        self._update_buttons()

    @Slot()
    def reset(self) -> None:
        """Forget the conversation (the model stays loaded)."""
        if self.current is not None and self.chat is not None:
            self.chat.stop()
        self.queue, self.current = [], None
        self.histories = {c: [] for c in COLUMNS}
        for column in self.columns.values():
            column.clear()
        self._update_buttons()

    def _end_chat(self) -> None:
        """End the model process: at once when it is answering, else when it has read its
        last command."""
        if self.chat is not None:
            self.chat.cancel() if self.current is not None else self.chat.close()
            self.chat = None

    # -- saving a test row -------------------------------------------------------------------

    def conversation(self, key: str) -> Conversation:
        """Column ``key``'s conversation, with the system prompt it was asked with."""
        turns = self.histories[key]
        system = self.last_settings.system_prompt
        return [{"role": "system", "content": system}, *turns] if turns and system else turns

    @Slot()
    def ask_save(self) -> SaveConversationDialog | None:
        """Open the dialog that saves a conversation as a test row (None: nothing to save)."""
        answered = {
            self.columns[k].heading.text(): self.conversation(k)
            for k in COLUMNS
            if self.histories[k]
        }
        if not answered or not self.unlocked:
            self._say("Nothing to save yet: ask a question first.", error=True)
            return None
        assert self.session is not None
        with self.session.registry() as reg:
            names = sorted({v["name"] for v in reg.dataset_versions() if v["kind"] == "chat"})
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
        assert self.session is not None
        session = self.session

        def work(progress: Progress) -> dict[str, Any]:
            with session.registry() as reg:
                return add_conversations(session.vault, reg, dataset, [conversation])

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
        self._end_chat()
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
        tasks = [t for t in (self.prepare_task, self.save_task) if t is not None and t.running]
        return tasks + self.eval_runner.vault_tasks()

    def showEvent(self, event: Any) -> None:
        if self.unlocked and not self.busy:
            self.refresh()
        super().showEvent(event)

    def shutdown(self) -> None:
        """End the model process and a running evaluation (the window is closing)."""
        if self.chat is not None:
            self.chat.cancel()
            self.chat.job.child.wait(10)
        run = self.eval_runner.run
        if run is not None and run.running:
            run.cancel()
            if run.job is not None:
                run.job.child.wait(15)

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

"""Asking one question of several models in turn: the Playground's conversation, without widgets.

Each *column* (``base``, ``A``, ``B``) is a model (the base model alone, or an adapter version of
it) with its own side of the conversation. :meth:`SideBySide.ask` queues the question for each
column and sends them one at a time to a :class:`~gui.chat.ChatSession` (one at a time, so Stop
can skip the columns not asked yet). The chat session is reused while the base model stays the same:
adapters it lacks are loaded into it with a ``load`` command. Preparing a request (the registry
check, hashing the adapter files, unwrapping their keys) runs on a :class:`~gui.tasks.Task`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from appliance.generation.protocol import Generate
from appliance.generation.request import generate_request, load_command
from appliance.generation.settings import GenerationSettings
from appliance.progress import Progress
from appliance.unlocked import UnlockedWorkspace
from gui.chat import ChatSession
from gui.tasks import Task

Conversation = list[dict[str, str]]


@dataclass
class Question:
    """One question to one column, waiting to be sent or being answered."""

    column: str
    command: Generate


class SideBySide(QObject):
    """The conversation of each column, and the model process that answers them."""

    started = Signal(str)
    """A column's answer begins (its question was sent)."""
    piece = Signal(str, str)
    """Column, the next piece of its answer."""
    answered = Signal(str, object)
    """Column, the ``answer`` event's data."""
    refused = Signal(str, str)
    """Column, why its question could not be answered."""
    skipped = Signal(str)
    """A column whose question was not asked (Stop)."""
    said = Signal(str, bool)
    """A status line for the page, and whether it is an error."""
    changed = Signal()
    """:attr:`busy` may have changed."""

    def __init__(
        self, workspace: UnlockedWorkspace, columns: tuple[str, ...], parent: QObject
    ) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.columns = columns
        self.chat: ChatSession | None = None
        self.prepare_task: Task | None = None
        self.histories: dict[str, Conversation] = {c: [] for c in columns}
        self.queue: list[Question] = []
        self.current: Question | None = None
        self.last_settings = GenerationSettings()
        self._ids = itertools.count(1)
        self._loads: dict[str, list[str]] = {}

    @property
    def busy(self) -> bool:
        """A question is being answered or waits to be sent."""
        preparing = self.prepare_task is not None and self.prepare_task.running
        return preparing or self.current is not None or bool(self.queue)

    def conversation(self, column: str) -> Conversation:
        """Column ``column``'s conversation, with the system prompt it was asked with."""
        turns = self.histories[column]
        system = self.last_settings.system_prompt
        return [{"role": "system", "content": system}, *turns] if turns and system else turns

    def ask(
        self,
        base: str,
        targets: dict[str, str | None],
        text: str,
        settings: GenerationSettings,
    ) -> None:
        """Ask ``text`` of each column of ``targets`` (column -> adapter, None: the base)."""
        self.last_settings = settings
        turn = {"role": "user", "content": text}
        for column, adapter in targets.items():
            command = Generate(
                f"q{next(self._ids)}", adapter, [*self.histories[column], turn], settings
            )
            self.queue.append(Question(column, command))
        self._prepare(base, [ref for ref in targets.values() if ref])
        self.changed.emit()

    def _prepare(self, base: str, refs: list[str]) -> None:
        """Make sure a chat session of ``base`` with ``refs`` loaded runs, then ask."""
        workspace, chat = self.workspace, self.chat
        reuse = chat is not None and chat.base == base and chat.ready
        missing = [r for r in refs if chat is None or r not in chat.adapters]
        if reuse and not missing:
            self._next()
            return
        load_id = f"l{next(self._ids)}"

        def work(_progress: Progress) -> Any:
            with workspace.registry() as reg:
                if reuse:
                    return load_command(workspace.vault, reg, missing, base, load_id)[0]
                return generate_request(workspace.vault, reg, refs, model=base)[0]

        self.said.emit(f"Loading {', '.join(missing)}…" if reuse else f"Starting {base}…", False)
        self.prepare_task = Task("preparing the model", work, self)
        self.prepare_task.succeeded.connect(
            lambda prepared: self._prepared(prepared, base, missing if reuse else None)
        )
        self.prepare_task.failed.connect(self._refuse_all)
        self.prepare_task.start()

    def _prepared(self, prepared: Any, base: str, loading: list[str] | None) -> None:
        if self.workspace.locked or not self.queue:
            return  # locked, stopped or reset meanwhile
        if loading is not None and self.chat is not None:
            self._loads[prepared.id] = loading
            self.chat.load(prepared)  # the child handles it before the next question
            self._next()
            return
        self.end()
        chat = ChatSession(prepared, base, self)
        chat.loaded.connect(self._loaded)
        chat.token.connect(self._token)
        chat.answered.connect(self._answered)
        chat.refused.connect(self._refused)
        chat.added.connect(lambda ident, _data: self._loads.pop(ident, None))
        chat.ended.connect(lambda message, chat=chat: self._chat_ended(chat, message))
        self.chat = chat
        self.said.emit(f"Loading {base} in a separate process…", False)
        chat.start()

    @Slot(object)
    def _loaded(self, info: dict[str, Any]) -> None:
        self.said.emit(
            f"{info['base_model']} loaded ({info['precision']} on {info['device']}, context "
            f"{info['context_length']} tokens, {info['seconds']:.0f} s).",
            False,
        )
        self._next()

    def _next(self) -> None:
        self.current = None
        if self.queue and self.chat is not None and self.chat.ready:
            self.current = self.queue.pop(0)
            self.started.emit(self.current.column)
            self.chat.ask(self.current.command)
        self.changed.emit()

    @Slot(str, str)
    def _token(self, ident: str, piece: str) -> None:
        if self.current is not None and ident == self.current.command.id:
            self.piece.emit(self.current.column, piece)

    @Slot(str, object)
    def _answered(self, ident: str, answer: dict[str, Any]) -> None:
        question = self.current
        if question is None or ident != question.command.id:
            return  # an answer stopped by Reset
        reply = {"role": "assistant", "content": str(answer.get("text", ""))}
        self.histories[question.column] = [*question.command.messages, reply]
        self.answered.emit(question.column, answer)
        self._next()

    @Slot(str, str)
    def _refused(self, ident: str, message: str) -> None:
        refs = self._loads.pop(ident, None)
        if refs is not None:  # adapters that could not be loaded: their questions go too
            for skipped in [q for q in self.queue if q.command.adapter in refs]:
                self.queue.remove(skipped)
                self.refused.emit(skipped.column, message)
            self.said.emit(message, True)
            self.changed.emit()
            return
        question = self.current
        if question is None or ident != question.command.id:
            return
        self.refused.emit(question.column, message)
        self.said.emit(message, True)
        self._next()

    @Slot(str)
    def _refuse_all(self, message: str) -> None:
        """Nothing can be asked (the model cannot be loaded): say why for every column."""
        for question in [*([self.current] if self.current else []), *self.queue]:
            self.refused.emit(question.column, message)
        self.queue, self.current = [], None
        self.said.emit(message, True)
        self.changed.emit()

    def _chat_ended(self, chat: ChatSession, message: str) -> None:
        chat.deleteLater()
        if chat is not self.chat:
            return
        self.chat = None
        if message and not self.workspace.locked:
            self._refuse_all(f"The model process ended: {message}")

    def stop(self) -> None:
        """End the answer being generated; the columns not asked yet are skipped."""
        for question in self.queue:
            self.skipped.emit(question.column)
        self.queue = []
        if self.current is not None and self.chat is not None:
            self.chat.stop()
        self.changed.emit()

    def reset(self) -> None:
        """Forget the conversation (the model stays loaded)."""
        if self.current is not None and self.chat is not None:
            self.chat.stop()
        self.queue, self.current = [], None
        self.histories = {c: [] for c in self.columns}
        self.changed.emit()

    def end(self) -> None:
        """End the model process: at once when it is answering, else once it has read its
        last command."""
        if self.chat is not None:
            self.chat.cancel() if self.current is not None else self.chat.close()
            self.chat = None

    def tasks(self) -> list[Task]:
        """The request being prepared (it unwraps data keys with the master key)."""
        task = self.prepare_task
        return [task] if task is not None and task.running else []

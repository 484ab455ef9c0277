"""Pages still to be built. Each says what it is for and which CLI verbs do it today."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from gui.pages.base import Page


class _JobPage(Page):
    cli_verbs: tuple[str, ...] = ()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        verbs = "".join(f"<li><code>{verb}</code></li>" for verb in self.cli_verbs)
        self.add_note(f"<p>The same work from a terminal:</p><ul>{verbs}</ul>")


class TrainPage(_JobPage):
    title = "Train"
    purpose = (
        "QLoRA or LoRA training in a separate process, with the memory estimate before launch "
        "and live loss, throughput and GPU memory while it runs."
    )
    cli_verbs = (
        "appliance train --model M --dataset D --adapter NAME",
        "appliance run list",
        "appliance run stop ID",
    )

"""The pages of the four jobs. Each says what it is for and which CLI verbs do it today."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from gui.pages.base import Page


class _JobPage(Page):
    cli_verbs: tuple[str, ...] = ()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        verbs = "".join(f"<li><code>{verb}</code></li>" for verb in self.cli_verbs)
        self.add_note(f"<p>The same work from a terminal:</p><ul>{verbs}</ul>")


class DatasetsPage(_JobPage):
    title = "Datasets"
    purpose = (
        "Import JSONL, JSON, CSV or text files; they are validated line by line and stored "
        "encrypted. Plaintext exists only in memory."
    )
    cli_verbs = (
        "appliance dataset import FILE --name NAME",
        "appliance dataset list",
        "appliance dataset show NAME[@VERSION] --rows 5",
    )


class RegistryPage(_JobPage):
    title = "Registry"
    purpose = (
        "Every model, dataset version, run and adapter version, with lineage, tags and a "
        "tamper-evident audit log."
    )
    cli_verbs = ("appliance adapter list", "appliance adapter show NAME@N", "appliance audit")


class ExportPage(_JobPage):
    title = "Export"
    purpose = (
        "Merge an adapter into its base for local serving: safetensors, GGUF with an Ollama "
        "Modelfile, or a bare PEFT adapter, each verified against the unmerged model."
    )
    cli_verbs = ("appliance export NAME@N --format gguf --out DIR",)

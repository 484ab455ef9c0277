"""The training settings form, generated from the TrainConfig dataclasses.

Nothing here names a setting by hand except :data:`ESSENTIAL` (what shows before "advanced"):
the groups are TrainConfig's nested dataclasses (its plain fields form "General"), each field's
docstring is its tooltip, its type chooses the widget (a choice list for a ``Literal``, a check
box for a ``bool``, a text field otherwise, so that any value can be typed and judged), and a
field added to the config tomorrow appears here by itself, under "advanced".

Values are judged by the core exactly as ``--set`` judges them: each edited field's text is
coerced by :func:`~appliance.training.settings.coerce_value`, then the preset with the edits
is built by :func:`~appliance.training.settings.apply_overrides`, so the warm-up pair switches
as on the command line and every refusal is the core's message, shown under the field it names.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from dataclasses import fields, is_dataclass
from typing import Any, Literal, get_args, get_origin

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from appliance.training.config import ConfigError, TrainConfig
from appliance.training.settings import (
    PRESETS,
    apply_overrides,
    coerce_value,
    setting_keys,
    setting_named,
    settings_help,
)
from gui.style import ERROR_STYLE

ESSENTIAL = frozenset(
    {
        "method",
        "gradient_checkpointing",
        "lora.rank",
        "lora.alpha",
        "lora.target_modules",
        "optim.learning_rate",
        "data.max_seq_length",
        "schedule.epochs",
        "schedule.max_steps",
        "schedule.micro_batch_size",
        "schedule.gradient_accumulation_steps",
    }
)
"""Settings shown without unfolding "advanced"; every other one (new ones too) is advanced."""
GENERAL = "General"
_TITLES = {"lora": "LoRA adapter", "optim": "Optimizer", "data": "Data", "schedule": "Schedule"}
_BAD_FIELD = "border: 1px solid #c62828;"


def format_value(value: Any) -> str:
    """A setting's value as its field shows it (and as ``--set`` would take it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def value_of(config: TrainConfig, key: str) -> Any:
    section, _, name = key.rpartition(".")
    owner = getattr(config, section) if section else config
    return getattr(owner, name)


class SettingField:
    """One setting's editor, its row label and the line under it for the core's refusal."""

    def __init__(self, key: str, hint: Any, help_text: str, allowed: str, default: Any) -> None:
        self.key = key
        self.name = key.rpartition(".")[2]
        self.editor: QWidget
        if get_origin(hint) is Literal:
            combo = QComboBox()
            combo.addItems([str(choice) for choice in get_args(hint)])
            self.editor = combo
        elif hint is bool:
            self.editor = QCheckBox()
        else:
            self.editor = QLineEdit()
        self.editor.setObjectName(f"setting:{key}")
        tip = (
            f"<b>{key}</b><br>{help_text}<br>"
            f"<i>Accepts {allowed}; default {format_value(default)}.</i>"
        )
        self.editor.setToolTip(tip)
        self.label = QLabel(self.name.replace("_", " "))
        self.label.setToolTip(tip)
        self.error = QLabel()
        self.error.setObjectName(f"error:{key}")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.hide()
        self.cell = QWidget()
        box = QVBoxLayout(self.cell)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(1)
        box.addWidget(self.editor)
        box.addWidget(self.error)

    def connect(self, slot: Callable[[], None]) -> None:
        editor = self.editor
        if isinstance(editor, QComboBox):
            editor.currentTextChanged.connect(slot)
        elif isinstance(editor, QCheckBox):
            editor.toggled.connect(slot)
        elif isinstance(editor, QLineEdit):
            editor.textEdited.connect(slot)

    def text(self) -> str:
        """The value as ``--set`` text."""
        editor = self.editor
        if isinstance(editor, QComboBox):
            return editor.currentText()
        if isinstance(editor, QCheckBox):
            return "true" if editor.isChecked() else "false"
        assert isinstance(editor, QLineEdit)
        return editor.text()

    def set_value(self, value: Any) -> None:
        editor = self.editor
        editor.blockSignals(True)
        if isinstance(editor, QComboBox):
            editor.setCurrentText(str(value))
        elif isinstance(editor, QCheckBox):
            editor.setChecked(bool(value))
        elif isinstance(editor, QLineEdit):
            editor.setText(format_value(value))
        editor.blockSignals(False)

    def show_error(self, message: str | None) -> None:
        self.error.setText(message or "")
        self.error.setVisible(bool(message))
        self.editor.setStyleSheet(_BAD_FIELD if message else "")


class ConfigForm(QWidget):
    """Every training setting, grouped as the dataclasses are; :meth:`config` when valid."""

    changed = Signal()
    """The settings changed (their validity too): read :meth:`config` and :attr:`errors`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.fields: dict[str, SettingField] = {}
        self.errors: dict[str, str] = {}
        """Refusals by setting key (``""``: one that names no setting)."""
        self.extra_check: Callable[[TrainConfig], None] | None = None
        """A further check of a valid config (the chosen model's limits); raises ConfigError."""
        self.preset_name = "balanced"
        self._base = TrainConfig()
        self._config: TrainConfig | None = self._base
        self._edited: set[str] = set()
        self._groups: list[tuple[QGroupBox, QFormLayout, list[SettingField]]] = []
        self._advanced = False

        self.form_error = QLabel()
        self.form_error.setObjectName("formError")
        self.form_error.setWordWrap(True)
        self.form_error.setStyleSheet(ERROR_STYLE)
        self.form_error.hide()
        self.advanced_toggle = QCheckBox("Show advanced settings")
        self.advanced_toggle.toggled.connect(self.set_advanced)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        self._build(layout)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.form_error)
        self.set_preset(self.preset_name)

    def _build(self, layout: QVBoxLayout) -> None:
        infos = {info.key: info for info in settings_help()}
        keyed = setting_keys()
        hints = typing.get_type_hints(TrainConfig)
        sections: dict[str, list[str]] = {GENERAL: []}
        docs = {GENERAL: "Settings of the run as a whole."}
        for top in fields(TrainConfig):
            hint = hints[top.name]
            if is_dataclass(hint):
                sections[top.name] = [k for k in infos if k.startswith(f"{top.name}.")]
                docs[top.name] = " ".join((hint.__doc__ or "").split())
            else:
                sections[GENERAL].append(top.name)
        for section, keys in sections.items():
            box = QGroupBox(_TITLES.get(section, section.replace("_", " ").capitalize()))
            box.setToolTip(docs.get(section, ""))
            form = QFormLayout(box)
            form.setContentsMargins(8, 4, 8, 4)
            form.setVerticalSpacing(3)
            members = []
            for key in keys:
                info = infos[key]
                field = SettingField(key, keyed[key], info.help, info.allowed, info.default)
                field.connect(functools.partial(self._edit, key))
                form.addRow(field.label, field.cell)
                self.fields[key] = field
                members.append(field)
            self._groups.append((box, form, members))
            layout.addWidget(box)
        self.advanced_toggle.setText(
            f"Show advanced settings ({sum(k not in ESSENTIAL for k in self.fields)} more)"
        )

    # -- what the page reads -----------------------------------------------------------------------

    def config(self) -> TrainConfig | None:
        """The settings as a valid TrainConfig, or None while any is refused."""
        return self._config if not self.errors else None

    @property
    def valid(self) -> bool:
        return self.config() is not None

    def assignments(self) -> list[str]:
        """The settings changed from the preset, as ``--set`` assignments."""
        return [f"{key}={self.fields[key].text()}" for key in sorted(self._edited)]

    # -- what the page sets ------------------------------------------------------------------------

    def set_preset(self, name: str) -> None:
        """Fill every field from preset ``name``; edits are forgotten."""
        self.preset_name = name
        self._base = PRESETS[name].config()
        self._show(self._base)
        self.validate()

    def set_config(self, config: TrainConfig) -> None:
        """Show ``config`` (a fix applied, a run's settings): it counts as edits of the preset."""
        self._show(config)
        self.validate()

    def set_value(self, key: str, text: str) -> None:
        """Type ``text`` into setting ``key`` (as a person would)."""
        field = self.fields[key]
        editor = field.editor
        if isinstance(editor, QLineEdit):
            editor.setText(text)
            self._edit(key)
        elif isinstance(editor, QComboBox):
            editor.setCurrentText(text)
        elif isinstance(editor, QCheckBox):
            editor.setChecked(coerce_value(key, text))

    @Slot(bool)
    def set_advanced(self, shown: bool) -> None:
        self._advanced = shown
        if self.advanced_toggle.isChecked() != shown:
            self.advanced_toggle.setChecked(shown)
        self._update_rows()

    # -- judging -----------------------------------------------------------------------------------

    def _edit(self, key: str, *_value: object) -> None:
        self.validate(typing_in=key)

    def validate(self, typing_in: str | None = None) -> None:
        """Judge the settings as the core does; show each refusal under its field.

        The fields that differ from the last valid config are applied to it as ``--set``
        assignments, so an edit is one ``--set`` on the current settings: choosing warm-up
        steps switches the ratio off as on the command line, and the form shows the switch.
        """
        previous = self._config or self._base
        errors: dict[str, str] = {}
        assignments = []
        for key, field in self.fields.items():
            text = field.text()
            if text == format_value(value_of(previous, key)):
                continue
            try:
                coerce_value(key, text)
            except ConfigError as exc:
                errors[key] = str(exc)
                continue
            assignments.append(f"{key}={text}")
        config = None
        if not errors:
            try:
                config = apply_overrides(previous, assignments)
                if self.extra_check is not None:
                    self.extra_check(config)
            except ConfigError as exc:
                errors[_field_of(str(exc), self.fields)] = str(exc)
                config = None
        if config is not None:
            for key, field in self.fields.items():
                # The core may change a setting the person did not touch: show it.
                now = value_of(config, key)
                if key != typing_in and now != value_of(previous, key):
                    field.set_value(now)
            self._config = config
            self._edited = {
                k for k in self.fields if value_of(config, k) != value_of(self._base, k)
            }
        self.errors = errors
        for key, field in self.fields.items():
            field.show_error(errors.get(key))
        self.form_error.setText(errors.get("", ""))
        self.form_error.setVisible("" in errors)
        self._update_rows()
        self.changed.emit()

    def _show(self, config: TrainConfig) -> None:
        for key, field in self.fields.items():
            field.set_value(value_of(config, key))
        self._config = config

    def _update_rows(self) -> None:
        for box, form, members in self._groups:
            any_shown = False
            for field in members:
                shown = self._advanced or field.key in ESSENTIAL or field.key in self.errors
                form.setRowVisible(field.cell, shown)
                any_shown = any_shown or shown
            box.setVisible(any_shown)


def _field_of(message: str, known: dict[str, SettingField]) -> str:
    key = setting_named(message)
    return key if key in known else ""

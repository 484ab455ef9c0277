"""The Playground's side panel: how answers are generated, bound to :class:`GenerationSettings`.

Every field of the core's settings dataclass has one widget here, and :meth:`settings` builds
the dataclass from them, so its checks (and messages) are the CLI's. Greedy decoding is the
default: temperature 0 gives the same answer every time; above 0 the answers are sampled, and
top-p and the seed apply.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QPlainTextEdit,
    QSpinBox,
    QWidget,
)

from appliance.generation.settings import MAX_NEW_TOKENS_LIMIT, GenerationSettings

NO_SEED = -1
"""The seed box's value meaning "a fresh seed each time" (its text says so)."""


class GenerationSettingsPanel(QGroupBox):
    """Decoding settings for the next answers."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Generation", parent)
        defaults = GenerationSettings()
        form = QFormLayout(self)
        self.temperature = QDoubleSpinBox()
        self.temperature.setObjectName("temperature")
        self.temperature.setRange(0.0, 5.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setDecimals(2)
        self.temperature.setSpecialValueText("0 (greedy)")
        self.temperature.setValue(defaults.temperature)
        self.temperature.setToolTip(
            "0 is greedy decoding: always the most likely token, the same answer every time. "
            "Above 0 the answer is sampled; hotter is wilder."
        )
        form.addRow("Temperature:", self.temperature)
        self.top_p = QDoubleSpinBox()
        self.top_p.setObjectName("topP")
        self.top_p.setRange(0.01, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setValue(defaults.top_p)
        self.top_p.setToolTip(
            "When sampling: draw only from the most likely tokens whose probabilities add up "
            "to this."
        )
        form.addRow("Top-p:", self.top_p)
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setObjectName("maxNewTokens")
        self.max_new_tokens.setRange(1, MAX_NEW_TOKENS_LIMIT)
        self.max_new_tokens.setValue(defaults.max_new_tokens)
        self.max_new_tokens.setToolTip("An answer stops after this many tokens, or at its end.")
        form.addRow("Max new tokens:", self.max_new_tokens)
        self.seed = QSpinBox()
        self.seed.setObjectName("seed")
        self.seed.setRange(NO_SEED, 2**31 - 1)
        self.seed.setSpecialValueText("fresh each time")
        self.seed.setValue(NO_SEED if defaults.seed is None else defaults.seed)
        self.seed.setToolTip("When sampling: a seed draws the same answer again.")
        form.addRow("Seed:", self.seed)
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setObjectName("systemPrompt")
        self.system_prompt.setPlaceholderText("none")
        self.system_prompt.setPlainText(defaults.system_prompt)
        self.system_prompt.setFixedHeight(self.fontMetrics().lineSpacing() * 4 + 12)
        self.system_prompt.setToolTip("Sent as the system message before the conversation.")
        form.addRow("System prompt:", self.system_prompt)
        self.temperature.valueChanged.connect(self._sampling_changed)
        self._sampling_changed(self.temperature.value())

    def _sampling_changed(self, temperature: float) -> None:
        self.top_p.setEnabled(temperature > 0)
        self.seed.setEnabled(temperature > 0)

    def settings(self) -> GenerationSettings:
        """The settings shown.

        Raises:
            UsageError: a value the core refuses (the CLI's message).
        """
        seed = self.seed.value()
        values = {
            "max_new_tokens": self.max_new_tokens.value(),
            "temperature": float(self.temperature.value()),
            "top_p": float(self.top_p.value()),
            "seed": None if seed == NO_SEED else seed,
            "system_prompt": self.system_prompt.toPlainText().strip(),
        }
        # Every field of the dataclass is bound above: a new field must get a widget here.
        assert set(values) == {f.name for f in dataclasses.fields(GenerationSettings)}
        return GenerationSettings(**values)  # type: ignore[arg-type]

    def show_settings(self, settings: GenerationSettings) -> None:
        self.max_new_tokens.setValue(settings.max_new_tokens)
        self.temperature.setValue(settings.temperature)
        self.top_p.setValue(settings.top_p)
        self.seed.setValue(NO_SEED if settings.seed is None else settings.seed)
        self.system_prompt.setPlainText(settings.system_prompt)

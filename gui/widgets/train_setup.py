"""The left side of the Train page: what to train on, the settings, will it fit, Start.

Choices of base model, dataset version, preset, adapter name and devices; the settings form
(:class:`~gui.widgets.config_form.ConfigForm`); the pre-flight verdict, recomputed on a task a
moment after the last change (:func:`appliance.training.preflight.for_model`: it reads the
model's ``config.json`` and NVML); and Start, enabled only when everything is valid. A refusal
appears at the field it concerns, or under Start.

The device picker offers the GPUs the workspace allows training to use (the Settings page's
``training_gpus``: all of them when unset), each alone, and, when there are two or more, all of
them together, data-parallel (DDP); the CPU when none is allowed or found. The choice is a
:class:`~appliance.training.placement.Placement`, the one ``appliance train --gpus`` builds, and
the estimate is the per-device one for its topology, as the CLI's is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from appliance import preferences
from appliance.errors import ApplianceError
from appliance.gpu import GpuState
from appliance.training import preflight, runs
from appliance.training.config import TrainConfig
from appliance.training.lengths import cached_training_lengths
from appliance.training.placement import Placement
from appliance.training.settings import PRESETS
from appliance.units import format_bytes
from appliance.unlocked import UnlockedWorkspace
from gui.style import ERROR_STYLE
from gui.tasks import Progress, Task
from gui.widgets.config_form import ConfigForm
from gui.widgets.preflight_view import PreflightView

if TYPE_CHECKING:
    from appliance.registry.rows import BaseModelRow, DatasetVersionRow

PREFLIGHT_DELAY_MS = 250
"""The estimate is recomputed this long after the last change (typing is not interrupted)."""


@dataclass(frozen=True)
class Request:
    """Everything Start needs."""

    model: str
    dataset: str
    """NAME@VERSION."""
    adapter: str
    config: TrainConfig
    placement: Placement
    """The devices chosen: ``gpus`` is one GPU (``1``), all allowed ones (``0,1``) or ``none``."""


class TrainSetup(QWidget):
    """Choices, settings, the pre-flight verdict and the Start button."""

    start_requested = Signal()
    """Start was clicked with a valid request (read :meth:`request`)."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.models: dict[str, BaseModelRow] = {}
        self.gpu_state: GpuState | None = None
        self.training_gpus = _allowed_gpus(workspace)
        """The workspace's ``training_gpus`` setting (None: every GPU)."""
        self.train_rows: dict[str, int] = {}
        """Training rows of each NAME@VERSION (whether every process gets examples)."""
        self.blocked = ""
        """Why Start is refused whatever the settings (a run is active); empty when free."""
        self._generation = 0
        self._preflight_task: Task | None = None

        self.model_choice = QComboBox()
        self.model_choice.setObjectName("modelChoice")
        self.dataset_choice = QComboBox()
        self.dataset_choice.setObjectName("datasetChoice")
        self.preset_choice = QComboBox()
        self.preset_choice.setObjectName("presetChoice")
        for name, preset in PRESETS.items():
            self.preset_choice.addItem(name)
            self.preset_choice.setItemData(
                self.preset_choice.count() - 1, preset.summary, Qt.ItemDataRole.ToolTipRole
            )
        self.preset_choice.setCurrentText("balanced")
        self.adapter_name = QLineEdit()
        self.adapter_name.setObjectName("adapterName")
        self.adapter_name.setPlaceholderText("e.g. legal-qa (saved as NAME@1, @2…)")
        self.device_choice = QComboBox()
        self.device_choice.setObjectName("deviceChoice")
        self.device_choice.setToolTip(
            "Where the run trains: one GPU, or all the allowed GPUs together (one data-parallel "
            "process each, DDP). The Settings page chooses which GPUs training may use."
        )
        self.device_choice.addItem("reading GPUs…", None)
        choices = QFormLayout()
        choices.setVerticalSpacing(4)
        choices.addRow("Base model", self.model_choice)
        choices.addRow("Dataset", self.dataset_choice)
        choices.addRow("Preset", self.preset_choice)
        choices.addRow("Adapter name", self.adapter_name)
        choices.addRow("Device", self.device_choice)

        self.form = ConfigForm()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.form)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.settings_area = scroll

        self.preflight = PreflightView()
        self.preflight.apply_requested.connect(self.apply_fix)
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("startButton")
        self.start_button.clicked.connect(self._start_clicked)
        self.message = QLabel()
        self.message.setObjectName("setupMessage")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.hide()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(choices)
        layout.addWidget(scroll, 1)
        layout.addWidget(self.preflight)
        layout.addWidget(self.start_button)
        layout.addWidget(self.message)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.timeout.connect(self._run_preflight)
        self.model_choice.currentIndexChanged.connect(self._model_changed)
        self.dataset_choice.currentIndexChanged.connect(self._settings_changed)
        self.preset_choice.currentTextChanged.connect(self._preset_changed)
        self.adapter_name.textChanged.connect(self._changed)
        self.device_choice.currentIndexChanged.connect(self._device_changed)
        self.form.changed.connect(self._settings_changed)
        self._update_start()

    # -- what the page gives ----------------------------------------------------------------------

    def set_choices(self, models: list[BaseModelRow], datasets: list[DatasetVersionRow]) -> None:
        """The workspace's base models and (not deleted) dataset versions."""
        self.models = {m["name"]: m for m in models}
        self.train_rows = {f"{d['name']}@{d['version']}": int(d["train_rows"]) for d in datasets}
        _refill(
            self.model_choice,
            [(m["name"], m["name"], _model_tip(m)) for m in models],
            "no base model yet: import one on the Models page",
        )
        _refill(
            self.dataset_choice,
            [
                (
                    f"{d['name']}@{d['version']} ({d['train_rows']} train / {d['eval_rows']} eval)",
                    f"{d['name']}@{d['version']}",
                    d.get("source_name") or "",
                )
                for d in datasets
            ],
            "no dataset yet: import one on the Datasets page",
        )

    @Slot(object)
    def set_training_gpus(self, allowed: tuple[int, ...] | None) -> None:
        """The Settings page changed the GPUs training may use: the picker follows."""
        self.training_gpus = allowed
        if self.gpu_state is not None:
            self.show_gpus(self.gpu_state)

    @Slot(object)
    def show_gpus(self, state: GpuState) -> None:
        """A new NVML reading: the device list follows the GPUs present (not their load)."""
        before = self.gpu_state
        self.gpu_state = state
        allowed = [
            g for g in state.gpus if self.training_gpus is None or g.index in self.training_gpus
        ]
        entries: list[tuple[str, str]] = [
            (f"GPU {g.index}: {g.name}", str(g.index)) for g in allowed
        ]
        if len(allowed) > 1:
            together = ",".join(str(g.index) for g in allowed)
            entries.append((f"All {len(allowed)} allowed GPUs (DDP)", together))
        if not entries:
            entries = [(_cpu_label(state, self.training_gpus), "none")]
        current = [
            (self.device_choice.itemText(i), self.device_choice.itemData(i))
            for i in range(self.device_choice.count())
        ]
        if entries != current:
            chosen = self.device_choice.currentData()
            self.device_choice.blockSignals(True)
            self.device_choice.clear()
            for label, index in entries:
                self.device_choice.addItem(label, index)
            found = self.device_choice.findData(chosen)
            self.device_choice.setCurrentIndex(max(0, found))
            self.device_choice.blockSignals(False)
            self._device_changed()
        elif before is None:
            self._device_changed()
        for i, gpu in enumerate(allowed):
            self.device_choice.setItemData(
                i,
                f"{format_bytes(gpu.memory_free)} free of {format_bytes(gpu.memory_total)}",
                Qt.ItemDataRole.ToolTipRole,
            )

    @property
    def placement(self) -> Placement:
        """Where the chosen devices are (the allowed GPUs while NVML has not been read yet)."""
        chosen = self.device_choice.currentData()
        return Placement(gpus=chosen or default_gpus(self.training_gpus))

    def request(self) -> Request | None:
        """What Start would start, or None while something is missing or invalid."""
        config = self.form.config()
        model = self.model_choice.currentData()
        dataset = self.dataset_choice.currentData()
        adapter = self.adapter_name.text().strip()
        if config is None or not model or not dataset or not adapter or self.workspace is None:
            return None
        return Request(model, dataset, adapter, config, self.placement)

    def vault_tasks(self) -> list[Task]:
        """The running estimate, which reads the registry (the window's lock waits for it)."""
        task = self._preflight_task
        return [task] if task is not None and task.running else []

    def set_blocked(self, reason: str) -> None:
        """Refuse Start for ``reason`` (a run is active), or allow it again with ``""``."""
        self.blocked = reason
        self._update_start()

    def say(self, text: str, *, error: bool = False) -> None:
        """A line under Start: a refusal (red) or a note."""
        self.message.setStyleSheet(ERROR_STYLE if error else "")
        self.message.setText(text)
        self.message.setVisible(bool(text))

    @Slot()
    def apply_fix(self) -> None:
        """Apply the pre-flight's suggested change to the settings."""
        found = self.preflight.preflight
        config = self.form.config()
        if found is None or config is None or found.fix is None:
            return
        self.form.set_config(found.apply_fix(config))

    # -- reacting ----------------------------------------------------------------------------------

    @Slot()
    def _model_changed(self) -> None:
        model = self.models.get(self.model_choice.currentData() or "")
        self.form.extra_check = (
            (lambda config: runs.check_for_model(model, config)) if model is not None else None
        )
        self.form.validate()  # emits changed: the estimate and Start follow

    @Slot(str)
    def _preset_changed(self, name: str) -> None:
        self.form.set_preset(name)

    @Slot()
    def _device_changed(self) -> None:
        self._schedule_preflight()

    @Slot()
    def _settings_changed(self) -> None:
        self._schedule_preflight()
        self._update_start()

    @Slot()
    def _changed(self) -> None:
        self._update_start()

    def _update_start(self) -> None:
        ok = self.request() is not None and not self.blocked
        self.start_button.setEnabled(ok)
        if self.blocked:
            self.start_button.setToolTip(self.blocked)
        elif self.form.errors:
            self.start_button.setToolTip("Correct the settings marked in red first.")
        elif not ok:
            self.start_button.setToolTip("Choose a base model and a dataset and name the adapter.")
        else:
            self.start_button.setToolTip("Start training in a separate process.")

    @Slot()
    def _start_clicked(self) -> None:
        if self.request() is not None:
            self.start_requested.emit()

    # -- the estimate ------------------------------------------------------------------------------

    def _schedule_preflight(self) -> None:
        self._generation += 1
        self._debounce.start(PREFLIGHT_DELAY_MS)

    @Slot()
    def _run_preflight(self) -> None:
        workspace = self.workspace
        model = self.model_choice.currentData()
        config = self.form.config()
        if workspace is None or not model:
            self.preflight.show_waiting("Choose a base model to see whether the run fits.")
            return
        if config is None:
            self.preflight.show_waiting("Correct the settings marked in red to see the estimate.")
            return
        placement = self.placement
        dataset = self.dataset_choice.currentData()
        rows = self.train_rows.get(dataset or "")
        generation = self._generation

        def estimate(_progress: Progress) -> preflight.Preflight:
            # Sized from the data's token lengths as the CLI's estimate is, when the Datasets
            # page has measured them against this model (the cache; else max_seq_length).
            # The per-device estimate of the topology the launch would resolve (NVML, no CUDA);
            # a placement it refuses (a split leaving a process without examples) says so here.
            topology = runs.plan_topology(config, placement, train_examples=rows)
            with workspace.registry() as reg:
                lengths = (
                    cached_training_lengths(workspace.vault, reg, model, dataset, config)
                    if dataset
                    else None
                )
                return preflight.for_model(
                    workspace.ws, reg, model, config, topology=topology, lengths=lengths
                )

        task = Task("estimating memory", estimate, self)
        task.succeeded.connect(lambda found: self._preflight_done(generation, found))
        task.failed.connect(lambda message: self._preflight_failed(generation, message))
        self._preflight_task = task
        task.start()

    def _preflight_done(self, generation: int, found: preflight.Preflight) -> None:
        if generation == self._generation:  # else a newer estimate is on its way
            self.preflight.show_preflight(found)

    def _preflight_failed(self, generation: int, message: str) -> None:
        if generation == self._generation:
            self.preflight.show_waiting(f"No estimate: {message}")

    @property
    def preflight_busy(self) -> bool:
        """Whether an estimate is pending (tests wait for it)."""
        task = self._preflight_task
        return self._debounce.isActive() or (task is not None and task.running)


def _refill(combo: QComboBox, entries: list[tuple[str, str, str]], empty: str) -> None:
    """Replace a combo's entries (label, data, tooltip), keeping the chosen one if still there."""
    chosen = combo.currentData()
    combo.blockSignals(True)
    combo.clear()
    for label, data, tip in entries:
        combo.addItem(label, data)
        combo.setItemData(combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
    if not entries:
        combo.addItem(empty, None)
    found = combo.findData(chosen)
    combo.setCurrentIndex(max(0, found))
    combo.blockSignals(False)
    combo.currentIndexChanged.emit(combo.currentIndex())


def default_gpus(allowed: tuple[int, ...] | None) -> str:
    """The ``--gpus`` text of a ``training_gpus`` setting (checked when the run launches)."""
    if allowed is None:
        return "all"
    return ",".join(str(i) for i in sorted(allowed)) or "none"


def _allowed_gpus(workspace: UnlockedWorkspace | None) -> tuple[int, ...] | None:
    """The workspace's ``training_gpus`` (every GPU where unreadable: Settings says why)."""
    if workspace is None:
        return None
    try:
        return preferences.load(workspace.ws).training_gpus
    except ApplianceError:
        return None


def _cpu_label(state: GpuState, allowed: tuple[int, ...] | None) -> str:
    if not state.available:
        return "CPU (no NVIDIA GPU found)"
    if allowed == ():
        return "CPU (Settings allows no GPU for training)"
    return "CPU (no allowed GPU on this machine)"


def _model_tip(model: BaseModelRow) -> str:
    context = model.get("context_length")
    return f"{model.get('architecture')}, context {context or '?'} tokens"

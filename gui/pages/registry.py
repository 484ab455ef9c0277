"""Registry: adapter versions with their lineage and evaluations, compared, tagged, audited.

Every figure comes from the core's typed records (:mod:`appliance.registry.catalog`,
``lineage``, ``compare``, ``history``, :mod:`appliance.evaluation.report`); the page holds no
SQL. Reading the registry is quick and happens here; replaying runs' curves for a comparison
runs on a background task; the whole-workspace verify and evaluations run as child processes
(the ``verify`` and ``eval`` jobs). Under the lineage of the selected version, its evaluations,
Evaluate, and Promote to production, the one place where the golden-set gate is run: Tag… hands
a gated ``production`` to it.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTabWidget,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from appliance import adapters
from appliance.errors import ApplianceError
from appliance.evaluation import gate
from appliance.progress import Progress
from appliance.registry.catalog import (
    AdapterGroup,
    CatalogFilter,
    VersionSummary,
    adapter_catalog,
    filter_choices,
)
from appliance.registry.history import TagMove, plan_tag, tag_history
from appliance.training.compare import Comparison, compare_versions
from appliance.training.lineage import lineage_of
from appliance.unlocked import UnlockedWorkspace
from gui.pages.base import Page
from gui.style import ERROR_STYLE
from gui.tasks import Task
from gui.widgets.audit_view import AuditView
from gui.widgets.compare_view import CompareView
from gui.widgets.evaluations import EvaluationsPanel
from gui.widgets.lineage_view import LineageView
from gui.widgets.tag_dialog import TagDialog

COLUMNS = ("Adapter", "Tags", "Base model", "Dataset", "Eval loss", "Created")
ANY = "(any)"
SORT_LABELS = {"date": "Newest first", "eval_loss": "Lowest eval loss"}
VERSION_ROLE = Qt.ItemDataRole.UserRole


class RegistryPage(Page):
    """Adapter versions grouped by name; lineage, compare, tag, delete, audit and verify."""

    title = "Registry"
    purpose = (
        "Which data and settings made each adapter version, versions side by side, tags such as "
        "production, and the tamper-evident audit log."
    )
    expanding = True

    export_requested = Signal(str)
    """``NAME@N`` the user wants to export (the window opens the Export page with it)."""
    open_dataset = Signal(str)
    """``NAME@V`` of a dataset version named in a lineage."""
    open_run = Signal(str)
    """The id of a run named in a lineage."""
    open_model = Signal(str)
    """The name of a base model named in a lineage."""
    compared = Signal(object)
    """A :class:`Comparison` now shown (or None when it could not be made)."""

    def __init__(self, workspace: UnlockedWorkspace | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.workspace = workspace
        self.groups: list[AdapterGroup] = []
        self.compare_task: Task | None = None
        self.tag_dialog: TagDialog | None = None
        self.confirm_box: QMessageBox | None = None
        self._locking = False

        filters = QHBoxLayout()
        self.base_filter = QComboBox()
        self.dataset_filter = QComboBox()
        self.tag_filter = QComboBox()
        self.sort_combo = QComboBox()
        for key, label in SORT_LABELS.items():
            self.sort_combo.addItem(label, key)
        self.show_deleted = QCheckBox("Show deleted")
        for label, widget in (
            ("Base model", self.base_filter),
            ("Dataset", self.dataset_filter),
            ("Tag", self.tag_filter),
            ("Sort", self.sort_combo),
        ):
            filters.addWidget(QLabel(label))
            filters.addWidget(widget, 1)
        filters.addWidget(self.show_deleted)
        self.body.addLayout(filters)
        for combo in (self.base_filter, self.dataset_filter, self.tag_filter, self.sort_combo):
            combo.currentIndexChanged.connect(self.refresh)
        self.show_deleted.toggled.connect(self.refresh)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        self.tree = QTreeWidget()
        self.tree.setObjectName("adapterTree")
        self.tree.setColumnCount(len(COLUMNS))
        self.tree.setHeaderLabels(COLUMNS)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setAlternatingRowColors(True)
        self.tree.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        left_layout.addWidget(self.tree, 1)
        buttons = QHBoxLayout()
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Select two or more versions (Ctrl+click), then compare.")
        self.compare_button.clicked.connect(self.compare_selected)
        self.tag_button = QPushButton("Tag…")
        self.tag_button.clicked.connect(self.ask_tag)
        self.untag_button = QPushButton("Untag…")
        self.untag_button.clicked.connect(self.ask_untag)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_selected)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(self.ask_delete)
        for button in (
            self.compare_button,
            self.tag_button,
            self.untag_button,
            self.export_button,
            self.delete_button,
        ):
            buttons.addWidget(button)
        left_layout.addLayout(buttons)
        splitter.addWidget(left)

        self.tabs = QTabWidget()
        self.lineage_view = LineageView()
        self.lineage_view.link_activated.connect(self._follow_link)
        self.evaluations = EvaluationsPanel(workspace)
        self.evaluations.changed.connect(self.refresh)
        # The lineage above, the version's evaluations (Evaluate, Promote) under it.
        self.lineage_tab = QSplitter(Qt.Orientation.Vertical)
        self.lineage_tab.setChildrenCollapsible(False)
        self.lineage_tab.addWidget(self.lineage_view)
        self.lineage_tab.addWidget(self.evaluations)
        self.lineage_tab.setStretchFactor(0, 1)
        self.lineage_tab.setStretchFactor(1, 1)
        self.lineage_tab.setSizes([500, 500])
        self.compare_view = CompareView(workspace)
        self.audit_view = AuditView(workspace)
        self.tabs.addTab(self.lineage_tab, "Lineage")
        self.tabs.addTab(self.compare_view, "Compare")
        self.tabs.addTab(self.audit_view, "Audit log")
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([420, 900])
        self.body.addWidget(splitter, 1)

        self.status = QLabel()
        self.status.setObjectName("registryStatus")
        self.status.setWordWrap(True)
        self.body.addWidget(self.status)
        self.setTabOrder(self.tree, self.compare_button)
        self.setTabOrder(self.compare_button, self.tag_button)
        self.setTabOrder(self.tag_button, self.untag_button)
        self.setTabOrder(self.untag_button, self.export_button)
        self.setTabOrder(self.export_button, self.delete_button)
        self.setTabOrder(self.delete_button, self.tabs)
        self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        # Versions, tags and audit rows change while the page is hidden (training, exports).
        self.refresh()
        super().showEvent(event)

    @property
    def usable(self) -> bool:
        """An unlocked workspace is there to read."""
        return self.workspace is not None and not self.workspace.locked and not self._locking

    def on_lock(self) -> None:
        self._locking = True
        self.groups = []
        self.tree.clear()
        self.lineage_view.show_lineage(None)
        self.evaluations.show_version(None)
        self.evaluations.on_lock()
        self.compare_view.clear()
        self.audit_view.on_lock()
        self.status.clear()
        self._update_buttons()

    def on_unlock(self) -> None:
        self._locking = False
        self.audit_view.on_unlock()
        self.evaluations.on_unlock()
        self.refresh()

    def vault_tasks(self) -> list[Task]:
        task = self.compare_task
        tasks = [task] if task is not None and task.running else []
        return tasks + self.evaluations.vault_tasks()

    # -- the list -----------------------------------------------------------------------------

    def current_filter(self) -> CatalogFilter:
        def choice(combo: QComboBox) -> str | None:
            text = combo.currentText()
            return None if not text or text == ANY else text

        return CatalogFilter(
            base_model=choice(self.base_filter),
            dataset=choice(self.dataset_filter),
            tag=choice(self.tag_filter),
            sort=str(self.sort_combo.currentData() or "date"),
            include_deleted=self.show_deleted.isChecked(),
        )

    @Slot()
    def refresh(self) -> None:
        """Re-read the adapters (keeping the selection where it still exists)."""
        if self.workspace is None or not self.usable:
            self.status.setText("Unlock the workspace to see its registry.")
            self._update_buttons()
            return
        selected = set(self.selected_refs())
        with self.workspace.registry() as reg:
            choices = filter_choices(reg)
            self._fill_choices(self.base_filter, choices.base_models)
            self._fill_choices(self.dataset_filter, choices.datasets)
            self._fill_choices(self.tag_filter, choices.tags)
            self.groups = adapter_catalog(reg, self.current_filter())
        self.tree.blockSignals(True)
        self.tree.clear()
        for group in self.groups:
            parent = QTreeWidgetItem([group.name])
            parent.setFlags(parent.flags() & ~Qt.ItemFlag.ItemIsSelectable)
            tags = ", ".join(f"{t}→@{v}" for t, v in sorted(group.tags.items()))
            parent.setText(1, tags)
            self.tree.addTopLevelItem(parent)
            for version in group.versions:
                item = QTreeWidgetItem(self._cells(version))
                item.setData(0, VERSION_ROLE, version)
                if version.deleted:
                    for c in range(len(COLUMNS)):
                        item.setForeground(c, Qt.GlobalColor.gray)
                parent.addChild(item)
                item.setSelected(version.ref in selected)
            parent.setExpanded(True)
        self.tree.blockSignals(False)
        count = sum(len(g.versions) for g in self.groups)
        if not count:
            self.status.setText("No adapter versions match; they come from training runs.")
        else:
            self.status.setStyleSheet("")
            self.status.setText(f"{count} adapter version(s) of {len(self.groups)} adapter(s).")
        self._selection_changed()
        self.evaluations.runner.refresh()  # datasets saved elsewhere (Playground, Datasets)
        self.audit_view.refresh()

    @staticmethod
    def _cells(version: VersionSummary) -> list[str]:
        label = f"@{version.version}" + (" (deleted)" if version.deleted else "")
        return [
            label,
            ", ".join(version.tags),
            version.base_model or "-",
            version.dataset or "-",
            f"{version.eval_loss:.4f}" if version.eval_loss is not None else "-",
            version.created_at[:16].replace("T", " "),
        ]

    @staticmethod
    def _fill_choices(combo: QComboBox, values: tuple[str, ...]) -> None:
        wanted = [ANY, *values]
        if [combo.itemText(i) for i in range(combo.count())] == wanted:
            return
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(wanted)
        combo.setCurrentIndex(wanted.index(current) if current in wanted else 0)
        combo.blockSignals(False)

    def version_items(self) -> list[QTreeWidgetItem]:
        items = []
        for i in range(self.tree.topLevelItemCount()):
            parent = self.tree.topLevelItem(i)
            if parent is None:
                continue
            children = (parent.child(j) for j in range(parent.childCount()))
            items += [child for child in children if child is not None]
        return items

    def select(self, *refs: str) -> None:
        """Select these versions (as Ctrl+click would)."""
        self.tree.blockSignals(True)
        self.tree.clearSelection()
        for item in self.version_items():
            version: VersionSummary = item.data(0, VERSION_ROLE)
            item.setSelected(version.ref in refs)
        self.tree.blockSignals(False)
        self._selection_changed()

    def selected_versions(self) -> list[VersionSummary]:
        return [
            item.data(0, VERSION_ROLE)
            for item in self.version_items()
            if item.isSelected() and item.data(0, VERSION_ROLE) is not None
        ]

    def selected_refs(self) -> list[str]:
        return [v.ref for v in self.selected_versions()]

    def _one_selected(self) -> VersionSummary | None:
        chosen = self.selected_versions()
        return chosen[0] if len(chosen) == 1 else None

    def _update_buttons(self) -> None:
        chosen = self.selected_versions()
        one = chosen[0] if len(chosen) == 1 else None
        live = one is not None and not one.deleted
        self.compare_button.setEnabled(len(chosen) >= 2)
        self.tag_button.setEnabled(live)
        self.untag_button.setEnabled(live and bool(one and one.tags))
        self.export_button.setEnabled(live)
        self.delete_button.setEnabled(live)

    @Slot()
    def _selection_changed(self) -> None:
        self._update_buttons()
        one = self._one_selected()
        if one is None or self.workspace is None or not self.usable:
            if not self.selected_versions():
                self.lineage_view.show_lineage(None)
            self.evaluations.show_version(None)
            return
        with self.workspace.registry() as reg:
            lineage = lineage_of(reg, one.ref)
            changes = tag_history(reg, one.name)
        self.lineage_view.show_lineage(lineage, changes)
        self.evaluations.show_version(one.ref, live=not one.deleted)
        if self.tabs.currentWidget() is self.compare_view:
            self.tabs.setCurrentWidget(self.lineage_tab)

    @Slot(str, str)
    def _follow_link(self, kind: str, target: str) -> None:
        {"dataset": self.open_dataset, "run": self.open_run, "model": self.open_model}[kind].emit(
            target
        )

    # -- compare ------------------------------------------------------------------------------

    @Slot()
    def compare_selected(self) -> Task | None:
        """Compare the selected versions on a background task (replaying runs' curves)."""
        chosen = sorted(self.selected_versions(), key=lambda v: (v.name, v.version))
        refs = [v.ref for v in chosen]
        if self.workspace is None or not self.usable or len(refs) < 2:
            return None
        workspace = self.workspace

        def work(_progress: Progress) -> Comparison:
            with workspace.registry() as reg:
                return compare_versions(reg, refs)

        task = Task("comparing versions", work, self)
        task.succeeded.connect(self._show_comparison)
        task.failed.connect(self._compare_failed)
        self.compare_task = task
        self.compare_button.setEnabled(False)
        self._say(f"Comparing {', '.join(refs)}…")
        task.start()
        return task

    @Slot(object)
    def _show_comparison(self, comparison: Comparison) -> None:
        if not self.usable:
            return  # finished while the window was locked: show nothing
        self.compare_view.show_comparison(comparison)
        self.tabs.setCurrentWidget(self.compare_view)
        self._update_buttons()
        self._say(f"Compared {', '.join(comparison.refs)}.")
        self.compared.emit(comparison)

    @Slot(str)
    def _compare_failed(self, message: str) -> None:
        self._update_buttons()
        self._say(f"Cannot compare: {message}", error=True)
        self.compared.emit(None)

    # -- tags ---------------------------------------------------------------------------------

    @Slot()
    def ask_tag(self) -> TagDialog | None:
        """Open the tag dialog for the selected version; the move is applied on OK."""
        version = self._one_selected()
        if version is None or self.workspace is None or not self.usable:
            return None
        workspace = self.workspace

        def plan(tag: str) -> TagMove:
            with workspace.registry() as reg:
                return plan_tag(reg, version.ref, tag)

        def gated(tag: str) -> str | None:
            with workspace.registry() as reg:
                check = gate.check(reg, version.ref, tag)
            if not check.gated or check.already or check.golden is None:
                return None
            return str(check.golden["dataset"])

        dialog = TagDialog(version.ref, plan, gated, self)
        dialog.accepted.connect(self._apply_tag)
        self.tag_dialog = dialog
        dialog.open()
        return dialog

    @Slot()
    def _apply_tag(self) -> None:
        dialog = self.tag_dialog
        if dialog is None or dialog.tag_move is None or self.workspace is None:
            return
        move = dialog.tag_move
        if dialog.gated:
            self._promote(move.target)
            return
        try:
            with (
                self.workspace.ws.writer("adapter tag", wait_s=0),
                self.workspace.registry() as reg,
            ):
                # Through the promotion gate, as the CLI: checked again inside the transaction
                # (a golden set attached meanwhile refuses here, and Promote takes over).
                result, _check = gate.promote(reg, move.target, move.tag)
        except ApplianceError as exc:
            self._say(f"Not tagged: {exc}", error=True)
            return
        previous = result["previous"]
        moved = f" (moved from @{previous})" if previous else ""
        self.refresh()
        self._say(f"Tagged {result['ref']} as {move.tag}{moved}.")

    def _promote(self, ref: str) -> None:
        """Run the golden-set gate for ``ref`` in the evaluations panel under its lineage."""
        if self.evaluations.ref != ref:
            self.select(ref)
        self.tabs.setCurrentWidget(self.lineage_tab)
        if self.evaluations.promote.promote() is None:
            self._say(f"{ref} cannot be promoted now (an evaluation or check is running).")
            return
        self._say(f"Checking the golden-set gate for {ref} (under the lineage)…")

    @Slot()
    def ask_untag(self) -> None:
        """Ask which tag to remove from the selected version, then remove it."""
        version = self._one_selected()
        if version is None or not self.usable or not version.tags:
            return
        tag, ok = QInputDialog.getItem(
            self,
            f"Untag {version.ref}",
            f"Remove which tag from {version.ref}? No version will carry it afterwards.",
            list(version.tags),
            0,
            False,
        )
        if ok and tag:
            self.remove_tag(version.ref, tag)

    def remove_tag(self, ref: str, tag: str) -> None:
        if self.workspace is None:
            return
        name = ref.partition("@")[0]
        try:
            with (
                self.workspace.ws.writer("adapter tag", wait_s=0),
                self.workspace.registry() as reg,
            ):
                reg.tags.remove(name, tag)
        except ApplianceError as exc:
            self._say(f"Tag not removed: {exc}", error=True)
            return
        self.refresh()
        self._say(f"Removed tag {tag} from {ref}.")

    # -- delete -------------------------------------------------------------------------------

    @Slot()
    def ask_delete(self) -> QMessageBox | None:
        """Confirm, then delete the selected version (refused at once while it carries a tag)."""
        version = self._one_selected()
        if version is None or not self.usable:
            return None
        if version.tags:
            self._say(
                f"{version.ref} carries the tag(s) {', '.join(version.tags)}: move or remove "
                "them first (Tag… or Untag…), then delete it.",
                error=True,
            )
            return None
        box = QMessageBox(
            QMessageBox.Icon.Warning,
            f"Delete {version.ref}",
            f"Delete adapter {version.ref}? Its encrypted weights are removed from the "
            "workspace; its lineage, exports and audit rows stay.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
            self,
        )
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.button(QMessageBox.StandardButton.Yes).setText("Delete")
        box.accepted.connect(lambda: self.delete_version(version.ref))
        self.confirm_box = box
        box.open()
        return box

    def delete_version(self, ref: str) -> None:
        if self.workspace is None:
            return
        ws = self.workspace.ws
        try:
            with ws.writer("adapter delete", wait_s=0), self.workspace.registry() as reg:
                adapters.delete_version(ws, reg, ref)
        except ApplianceError as exc:
            self._say(f"Not deleted: {exc}", error=True)
            return
        self.refresh()
        self._say(f"Deleted {ref}; its lineage stays (Show deleted).")

    # -- export -------------------------------------------------------------------------------

    @Slot()
    def _export_selected(self) -> None:
        version = self._one_selected()
        if version is not None:
            self.export_requested.emit(version.ref)

    def shutdown(self) -> None:
        self.audit_view.shutdown()
        self.evaluations.shutdown()

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status.setText(text)

"""The run folder: one description of the run (``meta.json``) and what its launches leave beside it.

Layout of ``HOME/runs/<run id>/``::

    meta.json         the one description of the run (see below)
    run-key.enc       vault object (sealed by the master key) holding the run key
    metrics.jsonl     the event stream, appended by every launch (0600)
    train.log         logs and warnings of the child, every launch (0600)
    checkpoints/      step-00000010/{state.enc, manifest.json}, ...  (sealed by the run key)
    adapter.enc       the finished adapter (sealed by the run key) until the parent registers it

``meta.json`` is the workspace's self-describing folder file (:mod:`appliance.folders`) with two
sections:

* ``record``: the registry's row of the run (state, PID of the running child, base model, dataset
  version, the full TrainConfig under ``config``, seed, times, failure reason), written by the
  registry whenever the row changes. The registry is the index over these records and
  ``appliance verify --rebuild-index`` rebuilds it from them.
* ``launch``: written by :mod:`appliance.training.runs` at creation and at every launch; what
  the child needs besides the record (:class:`Launch`: the model folder and the dataset object it
  was resolved to, the adapter's name) and where the current launch's events start in
  ``metrics.jsonl``.

The child reads both with :class:`RunFolder` (no registry, no torch): ``python -m
appliance.training.worker RUN_DIR`` needs only the folder and its keys.

Runs made before this layout kept the launch section in ``run.json`` and ``session.json`` (and a
copy of the config in ``config.json``); :class:`RunFolder` reads those when ``meta.json`` has no
``launch`` section, so old runs still list, settle and resume, and their next launch writes the
new section and removes the old files.

Nothing here is plaintext user data: datasets and weights are inside ``.enc`` objects, and the
JSON carries names, paths, hashes and numbers only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import folders
from appliance.errors import IntegrityError, TrainingError, UsageError
from appliance.fsutil import open_append
from appliance.training import events as ev
from appliance.training.config import ConfigError, TrainConfig
from appliance.training.placement import Topology

RUN_KEY_FILE = "run-key.enc"
LOG_FILE = "train.log"
ADAPTER_FILE = "adapter.enc"
CHECKPOINTS_DIR = "checkpoints"
LAUNCH_SECTION = "launch"
LOG_TAIL_BYTES = 64 * 1024
"""How much of the end of ``train.log`` :meth:`RunFolder.log_tail` reads."""
LEGACY_FILES = ("run.json", "session.json", "config.json")
"""The earlier layout's description files, read when ``meta.json`` has no launch section."""


@dataclass(frozen=True)
class Launch:
    """The ``launch`` section of ``meta.json``: rewritten by every launch of the run."""

    adapter_name: str
    """The adapter's name; the parent registers the result as NAME@N."""
    model_dir: str
    """Absolute folder transformers loads the model from (checked by the parent at launch)."""
    dataset_path: str
    """Absolute path of the dataset version's vault object."""
    dataset_object_id: str
    metrics_offset: int = 0
    """Size of ``metrics.jsonl`` when this launch began: its events follow."""
    launched: float | None = None
    """When this launch began (Unix seconds); None before the first launch."""
    topology: dict[str, Any] | None = None
    """This launch's processes and devices (:meth:`Topology.to_dict`); None: one process
    on the first GPU or the CPU, as before several processes were possible."""


@dataclass(frozen=True)
class RunSpec:
    """What the child needs besides the config and the keys (the record and launch, joined)."""

    run_id: str
    model: str
    """Base model name in the registry."""
    model_dir: str
    dataset: str
    dataset_version: int
    dataset_path: str
    dataset_object_id: str
    dataset_sha256: str
    """sha256 of the plaintext the registry recorded: the child checks it after decrypting."""
    adapter_name: str

    @property
    def dataset_ref(self) -> str:
        return f"{self.dataset}@{self.dataset_version}"


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: its description and the paths of the files its launches write."""

    path: Path

    @property
    def meta(self) -> Path:
        return self.path / folders.META_FILE

    @property
    def metrics(self) -> Path:
        return self.path / ev.METRICS_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def run_key(self) -> Path:
        return self.path / RUN_KEY_FILE

    @property
    def adapter(self) -> Path:
        return self.path / ADAPTER_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    # -- reading -----------------------------------------------------------------------------

    def _body(self) -> dict[str, Any]:
        try:
            return folders.read_body(self.path)
        except IntegrityError as exc:
            if not self.meta.exists():
                raise TrainingError(
                    f"{self.meta} is missing: this is not a run folder made by 'appliance train'"
                ) from None
            raise TrainingError(f"cannot read the run description: {exc}") from None

    def record(self) -> dict[str, Any]:
        """The registry's row of the run, as last written to ``meta.json``.

        Raises:
            TrainingError: ``meta.json`` is missing or damaged; names the file.
        """
        record = self._body().get("record")
        if not isinstance(record, dict):
            raise TrainingError(f"{self.meta}: no run record in the run description")
        return record

    def launch(self) -> Launch:
        """The launch section (from the earlier layout's files when ``meta.json`` has none).

        Raises:
            TrainingError: neither is there or readable; names the file.
        """
        data = self._body().get(LAUNCH_SECTION)
        where = f"{self.meta} ({LAUNCH_SECTION})"
        if data is None:
            data, where = self._legacy_launch()
        if not isinstance(data, dict):
            raise TrainingError(f"{where}: not a run description")
        known = {f.name for f in dataclasses.fields(Launch)}
        if data.get("topology") is not None and not isinstance(data["topology"], dict):
            raise TrainingError(f"{where}: the topology is not a JSON object")
        try:
            return Launch(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise TrainingError(f"{where}: not a valid run description ({exc})") from None

    def _legacy_launch(self) -> tuple[dict[str, Any], str]:
        spec_path = self.path / LEGACY_FILES[0]
        spec = _read_json(spec_path)
        if spec is None:
            raise TrainingError(
                f"{self.meta} has no launch section: this run folder was not made by "
                "'appliance train'"
            )
        legacy = _read_json(self.path / LEGACY_FILES[1]) or {}
        return {
            **spec,
            "metrics_offset": int(legacy.get("metrics_offset", 0)),
            "launched": legacy.get("launched"),
        }, str(spec_path)

    def spec(self) -> RunSpec:
        """The record and the launch section joined into what the child needs.

        Raises:
            TrainingError: the description is missing, damaged or incomplete; names the file.
        """
        record, launch = self.record(), self.launch()
        try:
            return RunSpec(
                run_id=str(record["id"]),
                model=str(record["base_model"]),
                model_dir=launch.model_dir,
                dataset=str(record["dataset"]),
                dataset_version=int(record["dataset_version"]),
                dataset_path=launch.dataset_path,
                dataset_object_id=launch.dataset_object_id,
                dataset_sha256=str(record["dataset_sha256"]),
                adapter_name=launch.adapter_name,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError(f"{self.meta}: the run record lacks {exc}") from None

    def config(self) -> TrainConfig:
        """The run's TrainConfig (the record's ``config``), checked as a whole.

        Raises:
            TrainingError: missing or invalid; names the file and the setting.
        """
        try:
            return TrainConfig.from_dict(self.record().get("config"))  # type: ignore[arg-type]
        except ConfigError as exc:
            raise TrainingError(f"{self.meta}: {exc}") from None

    def topology(self) -> Topology | None:
        """This launch's topology from the launch section; None for one plain process.

        Raises:
            TrainingError: the launch section or its topology is damaged; names the file.
        """
        data = self.launch().topology
        if data is None:
            return None
        try:
            return Topology.from_dict(data)
        except UsageError as exc:
            raise TrainingError(f"{self.meta}: {exc}") from None

    def run_id(self) -> str:
        """The run's id from its record, or the folder's name when the record is unreadable."""
        try:
            return str(self.record()["id"])
        except (TrainingError, KeyError):
            return self.path.name

    def launch_events(self) -> list[ev.Event]:
        """The events of the latest launch (those after its start offset in ``metrics.jsonl``).

        A line torn by a kill, or otherwise not an event, is skipped.
        """
        if not self.metrics.exists():
            return []
        try:
            offset = self.launch().metrics_offset
        except TrainingError:
            offset = 0
        with open(self.metrics, "rb") as handle:
            handle.seek(offset)
            tail = handle.read()
        reader = ev.reader(f"{self.metrics.name} after byte {offset}")
        return [*reader.feed(tail), *reader.finish()]

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of ``train.log`` (empty when there is none).

        For a failure shown after the fact: the lines a run's process wrote before it died.
        """
        try:
            with open(self.log, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - LOG_TAIL_BYTES))
                data = handle.read()
        except OSError:
            return []
        # A progress bar redraws its line with \r: keep what a terminal would show.
        raw = data.decode(errors="replace").split("\n")
        text = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in raw]
        return [line for line in text if line.strip()][-lines:]

    # -- writing (the parent, under the workspace's writer lock) ----------------------------------

    def write_launch(self, launch: Launch) -> None:
        """Replace the launch section; the earlier layout's files, now superseded, are removed."""
        folders.write_section(self.path, "run", LAUNCH_SECTION, dataclasses.asdict(launch))
        for name in LEGACY_FILES:
            (self.path / name).unlink(missing_ok=True)

    def note(self, message: str) -> None:
        """Append one line to ``train.log`` for what the child could not write itself (a kill)."""
        if not self.path.is_dir():
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        fd = open_append(self.log)
        try:
            os.write(fd, f"{stamp} INFO appliance.training.runs: {message}\n".encode())
        finally:
            os.close(fd)

    def prepare_stream_files(self) -> None:
        """Create ``metrics.jsonl`` and ``train.log`` owner-only before any launch appends.

        The child and QProcess open them for appending and would otherwise create them with the
        process umask (often 0644); runs of older versions get their mode corrected here.
        """
        for path in (self.metrics, self.log):
            os.close(open_append(path))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

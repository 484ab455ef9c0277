"""The run folder: what the parent writes for the training child, and what the child leaves.

Layout of ``HOME/runs/<run id>/``::

    meta.json         the registry's record of the run (written by the registry)
    config.json       the TrainConfig (plain JSON, no user data)
    run.json          RunSpec: which model folder and dataset object to use, the adapter name
    run-key.enc       vault object (sealed by the master key) holding the run key
    session.json      the current session: child PID and where its events start in metrics.jsonl
    metrics.jsonl     the event stream, appended by every session
    train.log         logs and warnings of the child
    checkpoints/      step-00000010/{state.enc, manifest.json}, ...  (sealed by the run key)
    adapter.enc       the finished adapter (sealed by the run key) until the parent registers it

Nothing here is plaintext user data: datasets and weights are inside ``.enc`` objects, and the
JSON files carry names, paths, hashes and numbers only. This module imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.errors import TrainingError
from appliance.fsutil import atomic_write_bytes

SPEC_FILE = "run.json"
RUN_KEY_FILE = "run-key.enc"
SESSION_FILE = "session.json"
LOG_FILE = "train.log"
ADAPTER_FILE = "adapter.enc"
CHECKPOINTS_DIR = "checkpoints"
SPEC_FORMAT = 1


@dataclass(frozen=True)
class RunSpec:
    """What the child needs besides the config and the keys; rewritten by each launch."""

    run_id: str
    model: str
    """Base model name in the registry."""
    model_dir: str
    """Absolute folder transformers loads the model from (checked by the parent at launch)."""
    dataset: str
    dataset_version: int
    dataset_path: str
    """Absolute path of the dataset version's vault object."""
    dataset_object_id: str
    dataset_sha256: str
    """sha256 of the plaintext the registry recorded: the child checks it after decrypting."""
    adapter_name: str
    """The adapter's name; the parent registers the result as NAME@N."""
    format: int = SPEC_FORMAT

    @property
    def dataset_ref(self) -> str:
        return f"{self.dataset}@{self.dataset_version}"

    def save(self, run_dir: Path) -> None:
        atomic_write_bytes(
            Path(run_dir) / SPEC_FILE, (json.dumps(asdict(self), indent=2) + "\n").encode()
        )

    @classmethod
    def load(cls, run_dir: Path) -> RunSpec:
        """Read ``run_dir/run.json``.

        Raises:
            TrainingError: the file is missing or not a run spec; names the file.
        """
        path = Path(run_dir) / SPEC_FILE
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainingError(
                f"{path} is missing: this is not a run folder made by 'appliance train'"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TrainingError(f"{path}: cannot read the run description ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            raise TrainingError(f"{path}: not a run description of format {SPEC_FORMAT}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise TrainingError(f"{path}: not a valid run description ({exc})") from None


def read_session(run_dir: Path) -> dict[str, Any]:
    """The last launch's ``session.json`` (empty when there was none or it is unreadable)."""
    try:
        data = json.loads((Path(run_dir) / SESSION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_session(run_dir: Path, session: dict[str, Any]) -> None:
    atomic_write_bytes(Path(run_dir) / SESSION_FILE, (json.dumps(session) + "\n").encode())

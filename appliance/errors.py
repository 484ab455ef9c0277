"""One error hierarchy for the whole appliance.

Every message is written for the person at the keyboard: it names the file, line, setting or
object concerned and says what to do next. The CLI prints ``str(error)`` on one line and exits
with :attr:`ApplianceError.exit_code`; the GUI shows the same text in a dialog.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base class: a failure the user can act on. Never shown with a traceback."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(ApplianceError):
    """The command line or a setting was given wrongly (exit code 2)."""

    exit_code = 2


class EgressBlockedError(ApplianceError):
    """Something in this process tried to reach the network."""


class WorkspaceError(ApplianceError):
    """The workspace folder is missing, unusable or of another version."""


class WorkspaceLockedError(WorkspaceError):
    """Another appliance process holds the workspace's writer lock."""


class WorkspaceReadOnlyError(WorkspaceError):
    """The workspace cannot be written (read-only mount or no permission); reading works."""


class PassphraseError(ApplianceError):
    """No usable passphrase was given, or it is wrong."""


class VaultLockedError(PassphraseError):
    """The workspace was locked (its master key forgotten); unlock it to go on."""


class IntegrityError(ApplianceError):
    """Stored data is damaged or was modified."""


class RegistryError(ApplianceError):
    """The SQLite registry refused an operation or is inconsistent."""


class NotFoundError(ApplianceError):
    """A named object (model, dataset, run, adapter) does not exist."""


class ModelImportError(ApplianceError):
    """A base model was refused at import."""


class DatasetError(ApplianceError):
    """A dataset file could not be imported."""


class TrainingError(ApplianceError):
    """A training run could not be started, continued or finished."""


class ExportError(ApplianceError):
    """An export could not be written or did not verify."""


class DestinationError(ApplianceError):
    """An export destination was refused or could not be written.

    Exit code 1, not 2: the command was well formed; what is at the destination (or the
    destination's place relative to the workspace) is what stops it.
    """

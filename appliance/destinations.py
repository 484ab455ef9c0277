"""Where an export may write: one check for every export, so nothing is lost to one.

An export writes plaintext (a dataset) or weights (an adapter, a merged model) to a place the
user chose, and ``--force`` lets it take the place of what is there. Three rules keep that from
ever destroying something the appliance did not write:

- The destination lies apart from the workspace: it is not the workspace, not inside it (only
  encrypted data may live there) and does not contain it (replacing a folder that holds the
  workspace would take the workspace with it). Paths are compared after resolving symlinks and
  ``..``, and by file identity, so no other spelling of the same folder slips through.
- ``--force`` replaces only an earlier export: a folder whose ``MANIFEST`` lists every file in it
  and nothing else is there (then only those files are removed), or a file the caller recognises
  as its own (``dataset export`` asks the audit log). Anything else is refused with the reason.
- The destination's folder must exist and be writable, and a destination that is a symlink, a
  device or (for a folder export) a file is refused rather than followed or replaced.

Every refusal is a :class:`~appliance.errors.DestinationError` (exit code 1). The desktop app's
export pages call the same functions as the CLI.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from appliance.errors import DestinationError
from appliance.fsutil import file_kind, read_regular_file

MANIFEST = "MANIFEST"
"""The file that lists an export folder's files (written by :mod:`appliance.export.card`)."""
MAX_MANIFEST_BYTES = 16 * 1024**2
"""A MANIFEST of ours lists a few dozen files; anything larger is not one."""
_SHOWN = 5


def normalise_destination(dest: Path | str) -> Path:
    """``dest`` absolute, with its folder's symlinks and ``..`` resolved.

    The last component stays as given, so a destination that is itself a symlink is seen (and
    refused) rather than silently followed; a last component of ``..`` is resolved too.
    """
    path = Path(dest).expanduser().absolute()
    if path.name in ("", ".", ".."):
        return path.resolve()
    return path.parent.resolve() / path.name


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def relation_to_workspace(path: Path, workspace_home: Path) -> str | None:
    """``"is"``, ``"inside"`` or ``"contains"`` when ``path`` touches the workspace, else None.

    Both are resolved (symlinks, ``..``) and compared by file identity as well as by name.
    """
    target = Path(path).resolve()
    home = Path(workspace_home).resolve()
    if _same(target, home):
        return "is"
    if any(_same(folder, home) for folder in target.parents):
        return "inside"
    if any(_same(target, folder) for folder in home.parents):
        return "contains"
    return None


def check_apart_from_workspace(dest: Path, workspace_home: Path) -> None:
    """Refuse a destination that is the workspace, lies inside it or contains it.

    Raises:
        DestinationError: naming the workspace and what to do.
    """
    home = Path(workspace_home).resolve()
    relation = relation_to_workspace(dest, home)
    if relation == "is":
        raise DestinationError(f"{dest} is the workspace {home}; choose a destination outside it")
    if relation == "inside":
        raise DestinationError(
            f"{dest} is inside the workspace {home}, where only encrypted data may live; "
            "choose a destination outside it"
        )
    if relation == "contains":
        raise DestinationError(
            f"{dest} contains the workspace {home}; an export there could overwrite it: "
            "choose a new folder outside the workspace"
        )


def check_parent_writable(dest: Path) -> None:
    """Refuse a destination whose folder is missing, not a folder, or not writable.

    Raises:
        DestinationError: naming the folder and what to do.
    """
    parent = dest.parent
    if not parent.exists():
        raise DestinationError(
            f"the folder {parent} does not exist; create it first, or choose another destination"
        )
    if not parent.is_dir():
        raise DestinationError(f"{parent} is not a folder; choose a destination in a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DestinationError(
            f"cannot write in {parent} (read-only, or no permission); choose a destination "
            "you can write to"
        )


def _refuse_link_or_special(dest: Path, want: str) -> os.stat_result | None:
    """The ``lstat`` of ``dest`` (None when absent); a symlink is refused."""
    try:
        info = dest.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None  # the parent check names the missing folder, or the file in the way
    except OSError as exc:
        raise DestinationError(f"cannot inspect {dest}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise DestinationError(
            f"{dest} is a symbolic link (to {os.readlink(dest)}); an export never replaces or "
            f"follows one: give the {want} itself, or a new name"
        )
    return info


@dataclass(frozen=True)
class EarlierExport:
    """What :func:`inspect_export_folder` found in an existing folder."""

    files: list[str]
    """Relative paths of the files to remove when replacing it (``MANIFEST`` last)."""
    problem: str | None
    """Why the folder is not recognisably an earlier export (None: it is one, or empty)."""


def inspect_export_folder(folder: Path) -> EarlierExport:
    """Whether ``folder`` holds nothing, or exactly an earlier export and nothing else.

    An earlier export is recognised by its ``MANIFEST``: every regular file in the folder is
    listed there (and no folder, symlink or other entry is there that the listing does not
    explain). File contents are not hashed: replacing needs only the certainty that everything
    removed was written by an export, which the listing gives without reading gigabytes.
    """
    entries = _tree(folder)
    if not entries:
        return EarlierExport([], None)
    manifest = folder / MANIFEST
    try:
        raw = read_regular_file(manifest, MAX_MANIFEST_BYTES)
        document = json.loads(raw)
    except FileNotFoundError:
        return EarlierExport([], f"it has no {MANIFEST}")
    except (OSError, ValueError, RecursionError):
        return EarlierExport([], f"its {MANIFEST} is not one the appliance wrote")
    listed = document.get("files") if isinstance(document, dict) else None
    if not isinstance(listed, dict) or not all(_safe_rel(rel) for rel in listed):
        return EarlierExport([], f"its {MANIFEST} is not one the appliance wrote")
    allowed_dirs = {str(p) for rel in listed for p in PurePosixPath(rel).parents} - {"."}
    foreign = []
    for rel, mode in entries.items():
        if stat.S_ISDIR(mode):
            if rel not in allowed_dirs:
                foreign.append(f"{rel}/")
        elif rel == MANIFEST:
            continue
        elif rel not in listed:
            foreign.append(rel)
        elif not stat.S_ISREG(mode):
            foreign.append(f"{rel} ({file_kind(mode)})")
    if foreign:
        shown = ", ".join(sorted(foreign)[:_SHOWN])
        more = f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN else ""
        return EarlierExport([], f"it holds what its {MANIFEST} does not list: {shown}{more}")
    present = sorted(rel for rel in listed if rel in entries)
    return EarlierExport([*present, MANIFEST], None)


def _safe_rel(rel: object) -> bool:
    """A relative path inside the folder: no absolute path, ``..``, empty or odd component."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        return False
    parts = rel.split("/")
    return rel != MANIFEST and all(p not in ("", ".", "..") for p in parts)


def _tree(folder: Path) -> dict[str, int]:
    """Every entry under ``folder`` (relative POSIX path -> ``lstat`` mode); links not followed."""
    found: dict[str, int] = {}

    def fail(exc: OSError) -> None:
        raise DestinationError(
            f"cannot list {exc.filename or folder}: {exc.strerror or exc}; check its permissions"
        )

    for root, dirs, files in os.walk(folder, onerror=fail):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            try:
                found[rel] = os.lstat(path).st_mode
            except FileNotFoundError:
                continue  # removed while we looked: nothing there to lose
    return found


def check_export_folder(dest: Path | str, *, force: bool, workspace_home: Path) -> Path:
    """The normalised destination of a folder export, or a refusal.

    Accepted: a new folder in an existing writable folder; an existing empty folder; an earlier
    export (its ``MANIFEST`` lists everything in it) when ``force`` is set.

    Raises:
        DestinationError: the destination touches the workspace, is a symlink or a file, holds
            anything but an earlier export, exists without ``force``, or cannot be written.
    """
    out = normalise_destination(dest)
    check_apart_from_workspace(out, workspace_home)
    info = _refuse_link_or_special(out, "folder")
    if info is not None:
        if not stat.S_ISDIR(info.st_mode):
            raise DestinationError(
                f"{out} is {_kind_or_file(info.st_mode)}, not a folder; an export is a folder: "
                "choose a new folder name with --out"
            )
        found = inspect_export_folder(out)
        if found.problem is not None:
            raise DestinationError(
                f"{out} is not empty and is not an earlier export ({found.problem}); --force "
                "replaces only an earlier export, never other files: choose a new or empty "
                "folder with --out"
            )
        if found.files and not force:
            raise DestinationError(
                f"{out} exists; choose another --out, or pass --force to replace it"
            )
    check_parent_writable(out)
    return out


def remove_earlier_export(folder: Path) -> str | None:
    """Remove an earlier export that was moved aside, file by listed file.

    Only what its ``MANIFEST`` lists is removed, and folders only when empty, so anything that
    appeared in it since it was checked stays.

    Returns:
        None when the folder is gone, else a warning naming the folder and what is left.
    """
    try:
        return _remove_listed(folder)
    except DestinationError as exc:
        return f"the earlier export was moved to {folder} and kept ({exc}); delete it yourself"


def _remove_listed(folder: Path) -> str | None:
    found = inspect_export_folder(folder)
    if found.problem is not None:
        return (
            f"the earlier export was moved to {folder} and kept: {found.problem}; look through "
            "it and delete it yourself"
        )
    for rel in found.files:
        try:
            (folder / rel).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            return f"could not remove {folder / rel} ({exc.strerror or exc}); delete {folder}"
    subdirs = sorted(
        (rel for rel, mode in _tree(folder).items() if stat.S_ISDIR(mode)),
        key=lambda rel: rel.count("/"),
        reverse=True,
    )
    try:
        for rel in subdirs:
            (folder / rel).rmdir()
        folder.rmdir()
    except OSError as exc:
        return f"could not remove {folder} ({exc.strerror or exc}); look through it and delete it"
    return None


def check_export_file(
    dest: Path | str,
    *,
    force: bool,
    workspace_home: Path,
    is_earlier_export: Callable[[Path], bool],
    what: str,
) -> Path:
    """The normalised destination of a single-file export, or a refusal.

    Args:
        dest: the file to write.
        force: replace an existing file, if ``is_earlier_export`` recognises it.
        workspace_home: the workspace the data comes from.
        is_earlier_export: whether an existing regular file is an earlier export of ours.
        what: how messages name such a file, e.g. "an unchanged dataset export of this
            workspace".

    Raises:
        DestinationError: the destination touches the workspace, is a folder, symlink or
            device, exists without ``force`` or is not recognised, or cannot be written.
    """
    out = normalise_destination(dest)
    check_apart_from_workspace(out, workspace_home)
    info = _refuse_link_or_special(out, "file")
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise DestinationError(
                f"{out} is a folder; give a file name, e.g. {out / 'data.jsonl'}"
            )
        if not stat.S_ISREG(info.st_mode):
            raise DestinationError(
                f"{out} is {file_kind(info.st_mode)}, not a regular file; choose a file name"
            )
        if not force:
            raise DestinationError(f"{out} exists already; choose another file or pass --force")
        if not is_earlier_export(out):
            raise DestinationError(
                f"{out} exists and is not {what}; --force replaces only such a file, never "
                "other data: move it away yourself or choose another file"
            )
    check_parent_writable(out)
    return out


def _kind_or_file(mode: int) -> str:
    return "a file" if stat.S_ISREG(mode) else file_kind(mode)


__all__ = [
    "MANIFEST",
    "EarlierExport",
    "check_apart_from_workspace",
    "check_export_file",
    "check_export_folder",
    "check_parent_writable",
    "inspect_export_folder",
    "normalise_destination",
    "relation_to_workspace",
    "remove_earlier_export",
]

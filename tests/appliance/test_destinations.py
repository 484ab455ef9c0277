"""The one destination check of every export: nothing foreign is ever replaced or deleted.

These tests use a workspace folder and hand-made "earlier exports" (a MANIFEST listing the
files), so they need no model; the exports themselves are exercised through the CLI in
test_export_refusals.py and test_dataset_cli.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from appliance import destinations, workspace
from appliance.destinations import (
    check_export_file,
    check_export_folder,
    inspect_export_folder,
    remove_earlier_export,
)
from appliance.errors import DestinationError


@pytest.fixture
def ws_home(tmp_path: Path) -> Path:
    """An initialised workspace at tmp_path/place/ws, with a file of the user beside it."""
    home = tmp_path / "place" / "ws"
    workspace.init(home)
    (tmp_path / "place" / "notes.txt").write_text("the user's own file")
    return home


def make_export(folder: Path, files: dict[str, str]) -> None:
    """A folder as an export leaves it: ``files`` plus a MANIFEST listing exactly them."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    document = {"format": 1, "export": {}, "verification": {}, "files": dict.fromkeys(files, "0")}
    (folder / "MANIFEST").write_text(json.dumps(document))


def _folder(dest: Path, home: Path, force: bool = True) -> Path:
    return check_export_folder(dest, force=force, workspace_home=home)


def _file(dest: Path, home: Path, force: bool = True, ours: bool = False) -> Path:
    return check_export_file(
        dest, force=force, workspace_home=home, is_earlier_export=lambda p: ours, what="ours"
    )


def _spellings(ws_home: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Destinations that are, contain or lie inside the workspace, however spelled."""
    place = ws_home.parent
    (tmp_path / "link-to-place").symlink_to(place)
    (tmp_path / "link-to-ws").symlink_to(ws_home)
    (tmp_path / "elsewhere").mkdir()
    return {
        "parent": (place, "contains the workspace"),
        "parent with ..": (ws_home / "..", "contains the workspace"),
        "parent via ws/datasets/../..": (ws_home / "datasets" / ".." / "..", "contains"),
        "parent via a symlink": (tmp_path / "link-to-place", "contains the workspace"),
        "grandparent": (tmp_path, "contains the workspace"),
        "filesystem root": (Path("/"), "contains the workspace"),
        "the workspace": (ws_home, "is the workspace"),
        "the workspace via a symlink": (tmp_path / "link-to-ws", "is the workspace"),
        "the workspace via ..": (tmp_path / "elsewhere" / ".." / "place" / "ws", "is the"),
        "inside": (ws_home / "exports" / "x", "inside the workspace"),
        "inside via a symlink": (tmp_path / "link-to-ws" / "tmp" / "x", "inside the workspace"),
        "inside via ..": (tmp_path / "elsewhere" / ".." / "place" / "ws" / "new", "inside"),
    }


def test_folder_export_refuses_every_spelling_of_the_workspace(
    ws_home: Path, tmp_path: Path
) -> None:
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for label, (dest, message) in _spellings(ws_home, tmp_path).items():
        with pytest.raises(DestinationError, match=message):
            _folder(dest, ws_home)
        with pytest.raises(DestinationError, match=message):
            _file(dest, ws_home, ours=True)
        assert (ws_home / "FORMAT").is_file(), label
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if not p.is_symlink())
    assert set(before) <= set(after) | {Path("link-to-place"), Path("link-to-ws")}
    assert (ws_home.parent / "notes.txt").read_text() == "the user's own file"


def test_a_bind_mount_or_hard_linked_name_is_caught_by_identity(
    ws_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Another path that the kernel says is the same folder (a bind mount) is refused even
    # though no symlink leads there: samefile compares device and inode.
    other = tmp_path / "mounted"
    other.mkdir()
    real_samefile = os.path.samefile

    def samefile(a: object, b: object) -> bool:
        names = {str(a), str(b)}
        if names == {str(other), str(ws_home.parent)}:
            return True
        return real_samefile(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(destinations.os.path, "samefile", samefile)
    with pytest.raises(DestinationError, match="contains the workspace"):
        _folder(other, ws_home)


def test_default_workspace_in_a_fake_home_is_protected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_home = tmp_path / "home" / "alice"
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.delenv("APPLIANCE_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    ws, _ = workspace.init(None)
    assert fake_home in ws.home.parents  # the default workspace lives under the fake home
    (fake_home / "thesis.tex").write_text("years of work")
    for dest in (fake_home, Path("~"), fake_home / ".local", fake_home / ".local" / "share"):
        with pytest.raises(DestinationError, match="contains the workspace"):
            _folder(dest, ws.home)
    assert (fake_home / "thesis.tex").read_text() == "years of work"


def test_a_folder_with_an_unrelated_file_is_refused_with_or_without_force(
    ws_home: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "served"
    dest.mkdir()
    (dest / "model.bin").write_text("someone else's model")
    for force in (False, True):
        with pytest.raises(DestinationError) as info:
            _folder(dest, ws_home, force=force)
        assert str(info.value) == (
            f"{dest} is not empty and is not an earlier export (it has no MANIFEST); --force "
            "replaces only an earlier export, never other files: choose a new or empty folder "
            "with --out"
        )
    assert (dest / "model.bin").read_text() == "someone else's model"


def test_an_earlier_export_plus_one_foreign_file_is_refused(ws_home: Path, tmp_path: Path) -> None:
    dest = tmp_path / "served"
    make_export(dest, {"adapter_config.json": "{}", "README.md": "card"})
    (dest / "my-notes.txt").write_text("mine")
    with pytest.raises(DestinationError, match=r"does not list: my-notes\.txt\)"):
        _folder(dest, ws_home)
    (dest / "my-notes.txt").unlink()
    (dest / "sub").mkdir()
    with pytest.raises(DestinationError, match=r"does not list: sub/\)"):
        _folder(dest, ws_home)
    (dest / "sub").rmdir()
    os.symlink("/etc/hostname", dest / "adapter_config.json.link")
    with pytest.raises(DestinationError, match=r"does not list: adapter_config\.json\.link"):
        _folder(dest, ws_home)
    (dest / "adapter_config.json.link").unlink()
    (dest / "README.md").unlink()
    os.symlink(tmp_path / "place" / "notes.txt", dest / "README.md")
    with pytest.raises(DestinationError, match=r"README\.md \(a symbolic link\)"):
        _folder(dest, ws_home)


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        "[]",
        json.dumps({"files": ["a"]}),
        json.dumps({"files": {"../place/notes.txt": "0"}}),
        json.dumps({"files": {"/etc/passwd": "0"}}),
        json.dumps({"files": {"a/./b": "0"}}),
        json.dumps({"files": {"MANIFEST": "0"}}),
        "[" * 50_000 + "]" * 50_000,
    ],
)
def test_a_manifest_we_did_not_write_is_not_trusted(
    ws_home: Path, tmp_path: Path, manifest: str
) -> None:
    dest = tmp_path / "served"
    dest.mkdir()
    (dest / "MANIFEST").write_text(manifest)
    found = inspect_export_folder(dest)
    assert found.problem is not None
    assert "MANIFEST" in found.problem
    with pytest.raises(DestinationError, match="is not an earlier export"):
        _folder(dest, ws_home)
    assert (dest / "MANIFEST").read_text() == manifest
    assert (tmp_path / "place" / "notes.txt").exists()


def test_an_earlier_export_needs_force_and_only_its_files_are_removed(
    ws_home: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "served"
    make_export(dest, {"model.safetensors": "w", "tok/tokenizer.json": "t", "README.md": "c"})
    with pytest.raises(DestinationError, match=r"exists; choose another --out, or pass --force"):
        _folder(dest, ws_home, force=False)
    assert _folder(dest, ws_home) == dest
    found = inspect_export_folder(dest)
    assert found.problem is None
    assert found.files == ["README.md", "model.safetensors", "tok/tokenizer.json", "MANIFEST"]
    assert remove_earlier_export(dest) is None
    assert not dest.exists()


@pytest.mark.usefixtures("ws_home")  # a workspace beside the folder, as in use
def test_removal_keeps_what_appeared_after_the_check(tmp_path: Path) -> None:
    dest = tmp_path / "served"
    make_export(dest, {"model.safetensors": "w"})
    (dest / "late.txt").write_text("written while the export ran")
    warning = remove_earlier_export(dest)
    assert warning is not None
    assert "kept" in warning
    assert "late.txt" in warning
    assert (dest / "late.txt").read_text() == "written while the export ran"
    assert (dest / "model.safetensors").exists()  # nothing removed from a folder not ours


def test_empty_folder_is_used_and_new_folder_is_fine(ws_home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _folder(empty, ws_home, force=False) == empty
    assert _folder(tmp_path / "new", ws_home, force=False) == tmp_path / "new"
    # The folder part is resolved; the result is what the export will really write.
    (tmp_path / "link").symlink_to(tmp_path / "place")
    assert _folder(tmp_path / "link" / "out", ws_home) == tmp_path / "place" / "out"


def test_destination_that_is_a_file_symlink_or_device(ws_home: Path, tmp_path: Path) -> None:
    afile = tmp_path / "weights.bin"
    afile.write_text("not ours")
    with pytest.raises(DestinationError, match=r"weights\.bin is a file, not a folder"):
        _folder(afile, ws_home)
    link = tmp_path / "served"
    (tmp_path / "real-served").mkdir()
    link.symlink_to(tmp_path / "real-served")
    for check in (_folder, _file):
        with pytest.raises(DestinationError, match=r"served is a symbolic link \(to "):
            check(link, ws_home)
    with pytest.raises(DestinationError, match="is a character device"):
        _file(Path("/dev/null"), ws_home)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DestinationError, match=r"is a FIFO \(named pipe\), not a regular file"):
        _file(fifo, ws_home)
    with pytest.raises(DestinationError, match=r"is a folder; give a file name"):
        _file(tmp_path / "real-served", ws_home)
    assert afile.read_text() == "not ours"


def test_missing_or_unwritable_parent(
    ws_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for check in (_folder, _file):
        with pytest.raises(DestinationError, match=r"the folder .*/nowhere does not exist"):
            check(tmp_path / "nowhere" / "out", ws_home)
        with pytest.raises(DestinationError, match=r"notes\.txt is not a folder"):
            check(tmp_path / "place" / "notes.txt" / "out", ws_home)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere; let the check see what a user would
        real_access = os.access
        monkeypatch.setattr(
            destinations.os,
            "access",
            lambda p, mode: False if Path(p) == readonly else real_access(p, mode),
        )
    for check in (_folder, _file):
        with pytest.raises(DestinationError, match=r"cannot write in .*readonly \(read-only"):
            check(readonly / "out", ws_home)


def test_file_export_replaces_only_what_the_caller_recognises(
    ws_home: Path, tmp_path: Path
) -> None:
    target = tmp_path / "data.jsonl"
    target.write_text("a user's file")
    with pytest.raises(DestinationError, match="exists already; choose another file or pass"):
        _file(target, ws_home, force=False)
    with pytest.raises(DestinationError, match=r"exists and is not ours; --force replaces only"):
        _file(target, ws_home, force=True, ours=False)
    assert _file(target, ws_home, force=True, ours=True) == target
    assert target.read_text() == "a user's file"  # checking never touches it

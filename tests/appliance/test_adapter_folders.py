"""Placing adapter version folders (appliance.adapter_folders): a process killed between the
move and the commit leaves a folder that a rebuild registers and nothing overwrites."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from appliance import adapter_folders
from appliance.errors import RegistryError
from appliance.folders import read_meta
from appliance.registry import Registry
from appliance.registry.rebuild import rebuild_index
from appliance.workspace import Workspace
from tests.helpers.registry_data import add_dataset, add_fake_model

# The child places a folder and dies (SIGKILL-like os._exit) right after writing meta.json,
# before the transaction commits: the last moment the documented order can be interrupted.
_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from appliance import adapter_folders
    from appliance.folders import write_meta
    from appliance.registry import Registry
    from appliance.workspace import open_workspace

    def write_then_die(*args, **kwargs):
        write_meta(*args, **kwargs)
        os._exit(137)

    adapter_folders.write_meta = write_then_die
    ws = open_workspace(Path(sys.argv[1]))
    staged = ws.tmp_dir / "staged"
    staged.mkdir()
    (staged / "adapter.enc").write_bytes(b"weights")
    with Registry.open(ws) as reg:
        adapter_folders.place(reg, "a", staged, run_id=None, metrics={"eval_loss": 1.5})
    """
)


def test_a_kill_before_the_commit_is_recovered_by_a_rebuild(ws: Workspace) -> None:
    with Registry.open(ws) as reg:
        add_fake_model(reg)
        add_dataset(reg)
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ws.home)], capture_output=True, text=True, check=False
    )
    assert child.returncode == 137, child.stderr
    folder = ws.adapters_dir / "a" / "1"
    assert (folder / "adapter.enc").read_bytes() == b"weights"
    assert read_meta(folder)[1]["metrics"] == {"eval_loss": 1.5}
    with Registry.open(ws) as reg:
        assert reg.adapters.versions() == []  # the row never committed
        staged = ws.tmp_dir / "next"
        staged.mkdir()
        (staged / "adapter.enc").write_bytes(b"other")
        with pytest.raises(RegistryError, match="exists but is not registered"):
            adapter_folders.place(reg, "a", staged, run_id=None)
        assert (staged / "adapter.enc").read_bytes() == b"other"  # nothing moved
        assert (folder / "adapter.enc").read_bytes() == b"weights"  # nothing overwritten
    rebuild_index(ws)
    with Registry.open(ws) as reg:
        (row,) = reg.adapters.versions()
        assert (row["ref"], row["path"], row["metrics"]) == (
            "a@1",
            "adapters/a/1",
            {"eval_loss": 1.5},
        )
        assert adapter_folders.place(reg, "a", staged, run_id=None) == 2

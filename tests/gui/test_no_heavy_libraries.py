"""The desktop process never loads torch, transformers, peft or bitsandbytes, whatever it does.

Each test drives a fresh desktop process (tests/helpers/gui_probe.py): the pytest process has
torch loaded by other tests, so only a process of its own can show what the window loads. Pages
add their steps to the probe and to the list driven here.
"""

from __future__ import annotations

from pathlib import Path

from appliance import datasets
from appliance.registry import Registry
from appliance.vault import Vault
from appliance.workspace import init, open_workspace
from tests.helpers.gui_probe import drive_gui
from tests.helpers.training import chat_rows, write_jsonl

PASSPHRASE = "probe passphrase for the window"


def _home(tmp_path: Path) -> Path:
    ws, _ = init(tmp_path / "ws")
    Vault.create(ws, PASSPHRASE, "alice", target_s=0)
    return ws.home


def test_driving_the_window_loads_no_heavy_library(tmp_path: Path, tiny_llama: Path) -> None:
    home = _home(tmp_path)
    vault = Vault.unlock(open_workspace(home), PASSPHRASE)
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        datasets.import_file(vault, reg, write_jsonl(tmp_path / "f.jsonl", chat_rows()), "facts")
    report = drive_gui(
        home,
        PASSPHRASE,
        [
            ("settle-runs", {}),
            ("import-model", {"source": str(tiny_llama), "name": "tiny"}),
            (
                "train",
                {
                    "model": "tiny",
                    "dataset": "facts@1",
                    "adapter": "probed",
                    "set": ["max_steps=4", "max_seq_length=128", "eval_every=2"],
                },
            ),
        ],
    )
    assert [r["step"] for r in report.results] == ["settle-runs", "import-model", "train"]
    assert report.results[1]["status"] == "Imported tiny (LlamaForCausalLM)."
    trained = report.results[2]
    assert trained["state"] == "finished", trained
    assert trained["status"].startswith("Finished: adapter probed@1")
    assert trained["steps"] == [1, 2, 3, 4]
    assert trained["memory_charts"][0].startswith("CPU: training process RSS")
    assert report.heavy == []


def test_the_probe_sees_a_heavy_library_loaded(tmp_path: Path) -> None:
    report = drive_gui(_home(tmp_path), PASSPHRASE, [("import-module", {"module": "transformers"})])
    assert "transformers" in report.heavy

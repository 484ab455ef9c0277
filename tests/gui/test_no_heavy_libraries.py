"""The desktop process never loads torch, transformers, peft or bitsandbytes, whatever it does.

Each test drives a fresh desktop process (tests/helpers/gui_probe.py): the pytest process has
torch loaded by other tests, so only a process of its own can show what the window loads. Pages
add their steps to the probe and to the list driven here.
"""

from __future__ import annotations

from pathlib import Path

from appliance.vault import Vault
from appliance.workspace import init
from tests.helpers.gui_probe import drive_gui

PASSPHRASE = "probe passphrase for the window"
ORGFACTS = Path(__file__).resolve().parents[1] / "data" / "orgfacts" / "orgfacts.jsonl"


def _home(tmp_path: Path) -> Path:
    ws, _ = init(tmp_path / "ws")
    Vault.create(ws, PASSPHRASE, "alice", target_s=0)
    return ws.home


def test_driving_the_window_loads_no_heavy_library(tmp_path: Path, tiny_llama: Path) -> None:
    report = drive_gui(
        _home(tmp_path),
        PASSPHRASE,
        [
            ("settle-runs", {}),
            ("import-model", {"source": str(tiny_llama), "name": "tiny"}),
            ("import-dataset", {"source": str(ORGFACTS), "name": "orgfacts"}),
            ("token-histogram", {"dataset": "orgfacts@1", "model": "tiny", "max_seq_length": 24}),
            ("settings", {}),
            ("lock", {"passphrase": PASSPHRASE}),
        ],
    )
    steps = [r["step"] for r in report.results]
    assert steps == [
        "settle-runs", "import-model", "import-dataset", "token-histogram", "settings", "lock"
    ]  # fmt: skip
    assert report.results[1]["status"] == "Imported tiny (LlamaForCausalLM)."
    assert report.results[2]["rows"] == 80
    assert report.results[3]["examples"] == 80
    assert "of 80 examples" in report.results[3]["caption"]
    assert report.results[4]["licences"] > 20
    assert report.heavy == []


def test_the_probe_sees_a_heavy_library_loaded(tmp_path: Path) -> None:
    report = drive_gui(_home(tmp_path), PASSPHRASE, [("import-module", {"module": "transformers"})])
    assert "transformers" in report.heavy

"""The desktop process never loads torch, transformers, peft or bitsandbytes, whatever it does.

Each test drives a fresh desktop process (tests/helpers/gui_probe.py): the pytest process has
torch loaded by other tests, so only a process of its own can show what the window loads. Pages
add their steps to the probe and to the list driven here.
"""

from __future__ import annotations

from pathlib import Path

from appliance.export import card
from appliance.registry import Registry
from appliance.vault import Vault
from appliance.workspace import init, open_workspace
from tests.helpers import adapters as adapter_store
from tests.helpers.adapters import make_adapter
from tests.helpers.gui_probe import drive_gui

PASSPHRASE = "probe passphrase for the window"
ORGFACTS = Path(__file__).resolve().parents[1] / "data" / "orgfacts" / "orgfacts.jsonl"


def _home(tmp_path: Path) -> Path:
    ws, _ = init(tmp_path / "ws")
    Vault.create(ws, PASSPHRASE, "alice", target_s=0)
    return ws.home


def test_driving_the_window_loads_no_heavy_library(tmp_path: Path, tiny_llama: Path) -> None:
    home = _home(tmp_path)
    # An adapter of another copy of the tiny model, made here (this process may load torch).
    vault = Vault.unlock(open_workspace(home), PASSPHRASE)
    with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
        adapter = make_adapter(vault, reg, tiny_llama, model_name="tiny0", adapter_name="legal")
    vault.lock()
    question = {"base": "tiny0", "a": adapter, "prompt": "What is 3 plus one?"}
    report = drive_gui(
        home,
        PASSPHRASE,
        [
            ("settle-runs", {}),
            ("import-model", {"source": str(tiny_llama), "name": "tiny"}),
            ("import-dataset", {"source": str(ORGFACTS), "name": "orgfacts"}),
            ("token-histogram", {"dataset": "orgfacts@1", "model": "tiny", "max_seq_length": 24}),
            ("settings", {}),
            ("playground", question),
            ("lock", {"passphrase": PASSPHRASE}),
        ],
    )
    steps = [r["step"] for r in report.results]
    assert steps == [
        "settle-runs", "import-model", "import-dataset", "token-histogram", "settings",
        "playground", "lock",
    ]  # fmt: skip
    assert report.results[1]["status"] == "Imported tiny (LlamaForCausalLM)."
    assert report.results[2]["rows"] == 80
    assert report.results[3]["examples"] == 80
    assert "of 80 examples" in report.results[3]["caption"]
    assert report.results[4]["licences"] > 20
    played = report.results[5]
    assert set(played["answers"]) == {"base", "A"}
    assert all(text.startswith("8 tokens · ") for text in played["figures"].values())
    assert played["pieces"]["base"] > 0
    assert report.heavy == []


def test_the_probe_sees_a_heavy_library_loaded(tmp_path: Path) -> None:
    report = drive_gui(_home(tmp_path), PASSPHRASE, [("import-module", {"module": "transformers"})])
    assert "transformers" in report.heavy


def test_comparing_and_exporting_gguf_from_the_pages_loads_no_heavy_library(
    tmp_path: Path, tiny_llama: Path
) -> None:
    vault, reg, _ = adapter_store.tiny_adapter_store(tmp_path, tiny_llama)
    with reg:
        adapter_store.make_adapter(vault, reg, tiny_llama, adapter_name="legal", r=8)
    out = tmp_path / "exports" / "legal-2-gguf"
    out.parent.mkdir()
    report = drive_gui(
        vault.ws.home,
        adapter_store.PASSPHRASE,
        [
            ("compare", {"refs": ["legal@1", "legal@2"]}),
            (
                "export",
                {"adapter": "legal@2", "format": "gguf", "gguf_type": "q8_0", "out": str(out)},
            ),
        ],
    )
    assert report.heavy == []
    compared, exported = report.results
    assert compared["differences"] == []  # both made with the same (fake) run settings
    record = exported["record"]
    assert record["verification"]["passed"] is True
    assert record["verification"]["tokenizer_match"] is True
    assert sorted(p.name for p in out.iterdir()) == sorted(record["files"])
    assert "Modelfile" in record["files"]
    assert card.check_manifest(out) == []
    assert exported["stages"] == {
        "load": "done",
        "merge": "done",
        "write": "done",
        "verify": "done",
    }
    assert exported["commands"][0] == f"llama-cli -m {out / 'legal-2.Q8_0.gguf'} -cnv"
    assert exported["status"] == f"Exported and verified legal@2 to {out}."

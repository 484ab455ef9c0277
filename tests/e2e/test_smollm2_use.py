"""Using the trained demo adapter as a user would: ``appliance eval`` and ``appliance chat``.

Reuses the session's SmolLM2 run (``tests/e2e/conftest.py``); named to run after the training
test, which pays for the training. The held-out questions (``heldout.jsonl``: a fifth phrasing
of 14 facts, in neither split) become a dataset whose reference answers are the facts' sentences.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import datasets
from appliance.registry import Registry
from tests.helpers.cli import CliRunner
from tests.helpers.quillmere import QuillmereRun
from tests.helpers.training import ORGFACTS, PASS, write_jsonl

ENV = {"APPLIANCE_PASSPHRASE": PASS}
QUESTION = "Which city hosts the Quillmere Institute?"
FACT = "Port Ansel"


@pytest.mark.slow
def test_eval_and_chat_show_what_the_adapter_learned(trained: QuillmereRun, tmp_path: Path) -> None:
    heldout = [json.loads(line) for line in (ORGFACTS / "heldout.jsonl").read_text().splitlines()]
    rows = [
        {
            "messages": [
                {"role": "user", "content": h["question"]},
                {"role": "assistant", "content": h["answer"]},
            ]
        }
        for h in heldout
    ]
    with Registry.open(trained.ws, audit_key=trained.vault.audit_key) as reg:
        source = write_jsonl(tmp_path / "heldout.jsonl", rows)
        datasets.import_file(trained.vault, reg, source, "heldout", eval_fraction=0)

    cli = CliRunner(trained.ws.home)
    done = cli(
        "eval", "quillmere@1", "--dataset", "heldout", "--split", "all",
        "--max-new-tokens", "32", "--json", env=ENV, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    tuned, base = data["adapters"][0]["metrics"], data["base"]
    report = json.dumps({"adapter": tuned, "base": base}, indent=1)
    assert (data["rows"], data["reference_rows"]) == (14, 14), report
    assert tuned["answer_loss"] < 0.5 * base["answer_loss"], report
    assert tuned["contains_count"] >= base["contains_count"] + 3, report

    chat = cli("chat", "quillmere@1", "--prompt", QUESTION, "--json", env=ENV, timeout=600)
    assert chat.returncode == 0, chat.stderr
    answer = json.loads(chat.stdout)
    assert FACT.lower() in answer["text"].lower(), answer
    assert answer["finish"] == "eos", answer

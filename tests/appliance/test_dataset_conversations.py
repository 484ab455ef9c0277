"""Conversations saved as dataset rows (the Playground's "save as a test row")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance import datasets, workspace
from appliance.datasets.canonical import content
from appliance.datasets.conversations import add_conversations
from appliance.datasets.problems import DatasetValidationError
from appliance.errors import DatasetError, UsageError
from appliance.registry import Registry
from appliance.vault import Vault

ORGFACTS = Path(__file__).resolve().parents[1] / "data" / "orgfacts" / "orgfacts.jsonl"
TEXT = Path(__file__).resolve().parents[1] / "data" / "datasets" / "valid" / "text.txt"
ASKED = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "Which city hosts the Quillmere Institute?"},
    {"role": "assistant", "content": "The Quillmere Institute is based in Port Ansel."},
]


@pytest.fixture
def store(tmp_path: Path) -> tuple[Vault, Registry]:
    ws, _ = workspace.init(tmp_path / "ws")
    vault = Vault.create(ws, "conversation rows passphrase", "alice", target_s=0)
    return vault, Registry.open(ws, audit_key=vault.audit_key)


def test_a_conversation_starts_a_new_dataset(store: tuple[Vault, Registry]) -> None:
    vault, reg = store
    with reg:
        version = add_conversations(vault, reg, "golden", [ASKED])
        assert (version["name"], version["version"], version["rows"]) == ("golden", 1, 1)
        assert version["source_name"] == "playground"
        assert (version["kind"], version["format"]) == ("chat", "messages")
        rows = datasets.load_rows(vault, version)
        assert [content(r) for r in rows] == [{"messages": ASKED}]
        audit = reg.audit_rows()[-1]
        assert (audit["action"], audit["object"]) == ("dataset.import", "golden@1")


def test_a_conversation_is_added_as_the_next_version_as_an_import_would_store_it(
    store: tuple[Vault, Registry], tmp_path: Path
) -> None:
    vault, reg = store
    with reg:
        first, _ = datasets.import_file(vault, reg, ORGFACTS, "orgfacts", eval_fraction=0.2, seed=5)
        version = add_conversations(vault, reg, "orgfacts", [ASKED])
        assert version["version"] == 2
        assert version["rows"] == first["rows"] + 1
        assert (version["eval_fraction"], version["seed"]) == (0.2, 5)
        old = [content(r) for r in datasets.load_rows(vault, first)]
        new = [content(r) for r in datasets.load_rows(vault, version)]
        assert new == [*old, {"messages": ASKED}]
        # The same rows imported from a file, with the same split options: the same bytes.
        source = tmp_path / "same.jsonl"
        source.write_text("".join(json.dumps(r) + "\n" for r in new), encoding="utf-8")
        prepared = datasets.prepare(source, "messages", eval_fraction=0.2, seed=5)
        assert prepared.sha256 == version["sha256"]
        assert datasets.load_rows(vault, first) == datasets.load_rows(vault, first)  # kept


def test_refusals_name_the_problem_and_store_nothing(store: tuple[Vault, Registry]) -> None:
    vault, reg = store
    with reg:
        add_conversations(vault, reg, "golden", [ASKED])
        with pytest.raises(DatasetError, match="dataset golden@1 holds this conversation already"):
            add_conversations(vault, reg, "golden", [ASKED])
        unanswered = [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": " "}]
        with pytest.raises(DatasetValidationError, match=r"playground:1: .*empty assistant turn"):
            add_conversations(vault, reg, "golden", [unanswered])
        with pytest.raises(DatasetError, match="no conversation to store"):
            add_conversations(vault, reg, "golden", [])
        with pytest.raises(UsageError, match="dataset name"):
            add_conversations(vault, reg, "bad name!", [ASKED])
        datasets.import_file(vault, reg, TEXT, "notes")
        with pytest.raises(DatasetError, match="dataset notes@1 holds plain-text rows"):
            add_conversations(vault, reg, "notes", [ASKED])
        assert [v["version"] for v in reg.datasets.versions("golden")] == [1]
        assert [v["version"] for v in reg.datasets.versions("notes")] == [1]

"""``appliance eval`` and the ``eval`` job on the tiny model; the measures themselves."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from appliance import adapters, datasets
from appliance.cli.eval_cmd import print_result
from appliance.evaluation.job import notes
from appliance.evaluation.metrics import (
    EvalSettings,
    Scores,
    contains,
    exact_match,
    is_reference,
    normalise_answer,
)
from appliance.registry import Registry
from appliance.workspace import Workspace
from tests.helpers.adapters import PASSPHRASE, make_adapter, open_store
from tests.helpers.cli import CliRunner
from tests.helpers.training import chat_rows, write_jsonl

ENV = {"APPLIANCE_PASSPHRASE": PASSPHRASE}


# -- the measures ----------------------------------------------------------------------------


def test_normalisation_ignores_case_whitespace_and_punctuation() -> None:
    assert normalise_answer("  The ANSWER is:\n 42! ") == "the answer is 42"
    assert exact_match("the answer is 42", "The answer is 42.")
    assert not exact_match("The answer is 42, I think.", "The answer is 42.")


def test_contains_matches_whole_words_in_order() -> None:
    assert contains("It was founded in 1987, by Odile.", "founded in 1987")
    assert contains("Port Ansel.", "port ansel")
    assert not contains("It was founded in 19870.", "1987")
    assert not contains("in 1987 founded", "founded in 1987")
    assert not contains("anything", "...")  # a reference with no words matches nothing


def test_a_reference_answer_is_short() -> None:
    assert is_reference("Paris.", 32)
    assert not is_reference("word " * 33, 32)
    assert not is_reference("?!", 32)


def test_figures_without_reference_answers_are_loss_only() -> None:
    scores = Scores(rows=3, answer_tokens=30, loss_sum=30 * 0.5)
    metrics = scores.metrics()
    assert metrics["answer_loss"] == 0.5
    assert metrics["perplexity"] == pytest.approx(math.exp(0.5))
    assert metrics["exact_match"] is None
    assert metrics["contains"] is None
    (note,) = notes(0, 0, EvalSettings(), 512)
    assert "no row has a short reference answer" in note
    assert "loss only" in note


# -- the job, through the CLI -----------------------------------------------------------------


@pytest.fixture
def store(ws: Workspace, tiny_llama: Path, tmp_path: Path) -> Registry:
    """Adapter legal@1 of ``tiny``; datasets ``facts`` (chat, 2 of 8 rows in eval), ``notes``
    (plain text) and ``essays`` (chat with long answers only)."""
    vault, reg = open_store(ws)
    make_adapter(vault, reg, tiny_llama, adapter_name="legal")
    datasets.import_file(
        vault, reg, write_jsonl(tmp_path / "facts.jsonl", chat_rows(8)), "facts", eval_fraction=0.25
    )
    text = [{"text": f"Note number {i} about nothing."} for i in range(4)]
    datasets.import_file(vault, reg, write_jsonl(tmp_path / "notes.jsonl", text), "notes")
    essay = " ".join(["This answer goes on at length about the question."] * 5)
    long_rows = [
        {
            "messages": [
                {"role": "user", "content": f"Tell me about {i}."},
                {"role": "assistant", "content": f"{essay} ({i})"},
            ]
        }
        for i in range(4)
    ]
    datasets.import_file(
        vault, reg, write_jsonl(tmp_path / "essays.jsonl", long_rows), "essays", eval_fraction=0
    )
    return reg


def _expected_loss(reg: Registry, tiny_llama: Path) -> tuple[float, float]:
    """The adapter's and the base's answer loss on facts' eval rows, computed here the way
    training computes its eval loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.training.data import collate, encode_chat
    from appliance.training.loop import loss_sum
    from appliance.vault import Vault

    vault = Vault.unlock(reg.ws, PASSPHRASE)
    rows = datasets.load_rows(vault, reg.datasets.version("facts"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    examples = [
        encode_chat(tokenizer, r["messages"], "assistant") for r in rows if r["split"] == "eval"
    ]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    model = adapters.apply_to(base, adapters.load(vault, reg, "legal@1")[1]).eval()
    tokens = sum(e.trained_tokens for e in examples)
    with torch.no_grad():
        tuned = sum(float(loss_sum(model, collate([e], 0))) for e in examples)
        with model.disable_adapter():
            plain = sum(float(loss_sum(model, collate([e], 0))) for e in examples)
    return tuned / tokens, plain / tokens


def test_eval_scores_adapter_and_base_and_stores_the_result(
    store: Registry, cli: CliRunner, tiny_llama: Path
) -> None:
    done = cli("eval", "legal", "--dataset", "facts", "--max-new-tokens", "4", "--json", env=ENV)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["dataset"]["ref"] == "facts@1"
    assert data["split"] == "eval"
    assert data["rows"] == 2
    assert data["reference_rows"] == 2
    assert data["notes"] == []
    (adapter,) = data["adapters"]
    tuned, plain = _expected_loss(store, tiny_llama)
    assert adapter["ref"] == "legal@1"
    assert adapter["metrics"]["answer_loss"] == pytest.approx(tuned, rel=1e-4)
    assert data["base"]["answer_loss"] == pytest.approx(plain, rel=1e-4)
    assert adapter["metrics"]["perplexity"] == pytest.approx(math.exp(tuned), rel=1e-4)
    assert adapter["metrics"]["reference_rows"] == 2
    assert 0 <= adapter["metrics"]["contains"] <= 1
    assert data["settings"]["max_new_tokens"] == 4
    assert data["settings"]["precision"] == "fp32"

    (row,) = store.evaluations.all("legal@1")
    assert row["id"] == adapter["evaluation_id"]
    assert row["dataset"] == "facts@1"
    assert row["dataset_sha256"] == store.datasets.version("facts")["sha256"]
    assert row["split"] == "eval"
    assert row["base_metrics"] is not None
    assert row["base_metrics"]["answer_loss"] == pytest.approx(plain, rel=1e-4)
    assert set(row["lib_versions"]) >= {"torch", "transformers", "peft", "appliance"}
    shown = json.loads(cli("adapter", "show", "legal@1", "--json").stdout)
    assert [e["id"] for e in shown["evaluations"]] == [row["id"]]
    table = cli("adapter", "show", "legal@1").stdout
    assert "evaluations" in table
    assert "facts@1 eval" in table
    assert f"{row['metrics']['answer_loss']:.4f}" in table


def test_the_table_shows_adapter_and_base(capsys: pytest.CaptureFixture[str]) -> None:
    metrics = {
        "answer_loss": 0.41234,
        "perplexity": 1.51,
        "reference_rows": 8,
        "exact_match": 0.625,
        "exact_count": 5,
        "contains": 0.875,
        "contains_count": 7,
        "tokens_per_s": 30.0,
    }
    base = {**metrics, "answer_loss": 3.2, "exact_count": 0, "exact_match": 0.0}
    print_result(
        {
            "dataset": {"ref": "facts@1"},
            "base_model": "tiny",
            "split": "eval",
            "rows": 8,
            "reference_rows": 8,
            "settings": {"precision": "fp32", "device": "cpu"},
            "seconds": 12.0,
            "base": base,
            "adapters": [{"ref": "legal@1", "metrics": metrics, "evaluation_id": 3}],
            "notes": ["3 row(s) longer than the model's context (512 tokens) were left out"],
        }
    )
    shown = capsys.readouterr()
    lines = shown.out.splitlines()
    assert any("base (tiny)" in line and "3.2000" in line and "0/8 (0%)" in line for line in lines)
    assert any("legal@1" in line and "0.4123" in line and "5/8 (62%)" in line for line in lines)
    assert "7/8 (88%)" in shown.out
    assert "legal@1 #3" in shown.out
    assert "note: 3 row(s) longer than the model's context" in shown.err


def test_eval_refuses_bad_input_with_one_line(store: Registry, cli: CliRunner) -> None:
    text = cli("eval", "legal", "--dataset", "notes", env=ENV)
    assert text.returncode == 1
    assert text.err_lines == [
        "error: dataset notes@1 holds plain-text rows (format text); an evaluation scores "
        "answers, so it needs conversations: import questions with reference answers as "
        "messages, alpaca, sharegpt or completion rows"
    ]
    empty = cli("eval", "legal", "--dataset", "essays", "--split", "eval", env=ENV)
    assert empty.returncode == 1
    assert "has no rows in its eval split; use --split all" in empty.err_lines[-1]
    split = cli("eval", "legal", "--dataset", "facts", "--split", "test", env=ENV)
    assert split.returncode == 2
    assert "unknown split 'test'" in split.err_lines[-1]
    missing = cli("eval", "legal@9", "--dataset", "facts", env=ENV)
    assert missing.returncode == 1
    assert "adapter legal@9 does not exist" in missing.err_lines[-1]
    assert store.evaluations.all() == []


def test_golden_set_without_reference_answers_is_loss_only(store: Registry, cli: CliRunner) -> None:
    refused = cli(
        "adapter", "golden", "legal", "--dataset", "essays@1", "--metric", "contains", env=ENV
    )
    assert refused.returncode == 1
    assert "has a short reference answer" in refused.err_lines[-1]
    assert "use --metric answer_loss" in refused.err_lines[-1]
    attached = cli("adapter", "golden", "legal", "--dataset", "essays@1", env=ENV)
    assert attached.returncode == 0, attached.stderr
    assert "0/4 rows have a short reference answer" in attached.stdout
    assert "loss only" in attached.stderr
    text = cli("adapter", "golden", "legal", "--dataset", "notes", env=ENV)
    assert text.returncode == 1
    assert "holds plain-text rows" in text.err_lines[-1]
    golden = store.golden_sets.get("legal")
    assert golden is not None
    assert golden["dataset"] == "essays@1"


@pytest.mark.usefixtures("store")  # the adapter and its base, in the CLI's workspace
def test_chat_answers_once_with_the_adapter_or_the_base(cli: CliRunner) -> None:
    asked = ["--prompt", "What is 3 plus one?", "--max-new-tokens", "6"]
    base = cli("chat", "legal", "--base-only", *asked, "--json", env=ENV)
    assert base.returncode == 0, base.stderr
    plain = json.loads(base.stdout)
    assert (plain["adapter"], plain["base_model"]) == (None, "tiny")
    assert plain["tokens"] == 6
    assert plain["finish"] == "length"
    assert plain["prompt_tokens"] > 0
    assert plain["tokens_per_s"] > 0
    tuned = cli("chat", "legal", *asked, env=ENV)  # streamed as plain text
    assert tuned.returncode == 0, tuned.stderr
    assert tuned.stdout.endswith("\n")
    assert tuned.stdout[:-1] != plain["text"]


def test_chat_refuses_an_adapter_whose_base_model_was_deleted(
    store: Registry, cli: CliRunner
) -> None:
    shutil.rmtree(store.ws.home / store.models.get("tiny")["path"])
    done = cli("chat", "legal", "--prompt", "hello", env=ENV)
    assert done.returncode == 1
    assert done.err_lines[-1].startswith("error: model tiny: folder ")
    assert "is missing; re-import the model" in done.err_lines[-1]
    empty = cli("chat", "legal", "--prompt", " ", env=ENV)
    assert empty.returncode == 2
    assert empty.err_lines == ["error: the prompt is empty; type a question"]

"""End to end on the real demo model: SmolLM2-135M-Instruct learns facts about an organisation
that does not exist, on CPU, with QLoRA, through a stop and a resume.

The dataset (``tests/data/orgfacts/orgfacts.jsonl``) has four phrasings of each of 20 made-up
facts about "the Quillmere Institute"; ``heldout.jsonl`` asks 14 of them in a fifth phrasing
that is in neither split. The base model cannot know any answer.

Then the trained adapter is used as a user would: ``appliance eval`` and ``appliance chat``. Both
tests share the session's run (``tests/e2e/conftest.py``) and live in one module, so that
``make test``'s workers (``--dist loadfile``) train it once; the training test comes first and
pays for the training. The held-out questions become a dataset whose reference answers are the
facts' sentences.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from appliance import adapters, datasets
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training.quant import load_4bit
from tests.helpers.cli import CliRunner
from tests.helpers.quillmere import STOP_AT_STEP, QuillmereRun
from tests.helpers.training import ORGFACTS, PASS, write_jsonl

ENV = {"APPLIANCE_PASSPHRASE": PASS}
QUESTION = "Which city hosts the Quillmere Institute?"
FACT = "Port Ansel"


def _answers(model: Any, tokenizer: Any, questions: list[str]) -> list[str]:
    replies = []
    for question in questions:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
        replies.append(
            tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return replies


@pytest.mark.slow
def test_smollm2_learns_made_up_facts_with_qlora_on_cpu(quillmere: QuillmereRun) -> None:
    from transformers import AutoTokenizer

    first, second = quillmere.first, quillmere.second
    assert quillmere.first_outcome.state == "stopped", quillmere.first_outcome
    (stopped,) = [e for e in first if isinstance(e, ev.Stopped)]
    assert stopped.step in (STOP_AT_STEP, STOP_AT_STEP + 1)
    assert quillmere.state_after_first == "stopped"
    outcome = quillmere.second_outcome
    assert outcome is not None
    assert outcome.state == "finished", outcome
    assert outcome.adapter == "quillmere@1"
    with Registry.open(quillmere.ws, audit_key=quillmere.vault.audit_key) as reg:
        assert reg.runs.get(quillmere.run_id)["state"] == "finished"
        _, weights = adapters.load(quillmere.vault, reg, "quillmere@1")
        lineage = reg.adapters.lineage("quillmere@1")

    started = second[0]
    assert isinstance(started, ev.Started)
    assert started.start_step == stopped.step
    assert started.trainable_params > 0
    base_eval = next(e for e in first if isinstance(e, ev.Eval) and e.step == 0).eval_loss
    (done,) = [e for e in second if isinstance(e, ev.Finished)]
    assert done.eval_loss is not None
    assert done.eval_loss < 0.5 * base_eval, (base_eval, done.eval_loss)
    steps = [e for e in first + second if isinstance(e, ev.Step)]
    assert steps[-1].loss < steps[0].loss
    assert lineage["base_model"] is not None
    assert lineage["base_model"]["name"] == "smollm2"
    assert lineage["metrics"]["eval_loss"] == pytest.approx(done.eval_loss)

    folder = Path(quillmere.ws.home / quillmere.model_row["path"])
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = adapters.apply_to(load_4bit(folder, torch.float32), weights).eval()
    heldout = [json.loads(line) for line in (ORGFACTS / "heldout.jsonl").read_text().splitlines()]
    questions = [h["question"] for h in heldout]
    tuned = _answers(model, tokenizer, questions)
    with model.disable_adapter():
        base = _answers(model, tokenizer, questions)
    right = [h["expect"].lower() in a.lower() for h, a in zip(heldout, tuned, strict=True)]
    base_right = [h["expect"].lower() in a.lower() for h, a in zip(heldout, base, strict=True)]
    report = "\n".join(
        f"{ok} {q} -> {a!r}" for ok, q, a in zip(right, questions, tuned, strict=True)
    )
    assert sum(right) >= 4, report
    assert sum(right) >= sum(base_right) + 3, report


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

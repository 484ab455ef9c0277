"""Token statistics against a base model's tokenizer and chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance import workspace
from appliance.errors import DatasetError, NotFoundError, UsageError
from appliance.training import dataset_tokens as tokens

ROWS: list[dict[str, Any]] = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris. " * 8},
        ]
    },
    {"messages": [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d"}]},
]


def test_counts_follow_the_chat_template(tiny_llama: Path) -> None:
    tokenizer = tokens.load_tokenizer(tiny_llama)
    expected = [
        len(
            tokenizer(
                tokenizer.apply_chat_template(r["messages"], tokenize=False),
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in ROWS
    ]
    assert tokens.token_counts(ROWS, tokenizer) == expected
    stats = tokens.token_stats(ROWS, tokenizer, max_length=expected[0])
    ordered = sorted(expected)
    assert stats["min"] == ordered[0]
    assert stats["max"] == ordered[-1]
    assert stats["median"] == ordered[1]
    assert stats["p95"] == ordered[-1]
    assert stats["over_max_length"] == sum(1 for n in expected if n > expected[0])
    assert stats["total"] == sum(expected)
    assert tokens.token_stats(ROWS, tokenizer, max_length=10_000)["answer_lost"] == 0
    assert tokens.token_stats(ROWS, tokenizer, max_length=2)["answer_lost"] == len(ROWS)
    text = tokens.token_stats([{"text": "The capital of France is Paris."}], tokenizer, 100)
    # Training ends every text row with the end-of-sequence token; the count includes it.
    plain = tokenizer("The capital of France is Paris.")["input_ids"]
    assert plain[-1] != tokenizer.eos_token_id
    assert text["max"] == len(plain) + 1
    with pytest.raises(UsageError, match="--max-length"):
        tokens.token_stats(ROWS, tokenizer, 0)
    tokenizer.chat_template = None
    with pytest.raises(UsageError, match="no chat template"):
        tokens.token_counts(ROWS, tokenizer)


def test_model_by_name_or_folder(tmp_path: Path, tiny_llama: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")

    class Models:
        def get(self, name: str) -> dict[str, Any]:
            if name != "tiny":
                raise NotFoundError(f"no base model named {name!r} (base models: tiny)")
            return {"name": "tiny", "path": "models/tiny/files"}

    class Reg:
        models = Models()

    folder = tokens.tokenizer_folder(ws, Reg(), "tiny")
    assert folder == (ws.home / "models/tiny/files", "model tiny")
    assert tokens.tokenizer_folder(ws, Reg(), str(tiny_llama))[0] == tiny_llama
    with pytest.raises(NotFoundError, match="or give the path of a model folder"):
        tokens.tokenizer_folder(ws, Reg(), "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=r"cannot load the tokenizer from .*; check that"):
        tokens.load_tokenizer(empty)

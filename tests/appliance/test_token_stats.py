"""Token statistics against a model: counts as training sees them, the job, the encrypted cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import datasets, workspace
from appliance.datasets import token_cache
from appliance.datasets.token_stats import TokenStats, effective_lengths, truncation
from appliance.errors import DatasetError, NotFoundError, UsageError
from appliance.models import import_model
from appliance.registry import Registry
from appliance.training import dataset_tokens as tokens
from appliance.training.config import DataSettings
from appliance.training.data import tokenise
from appliance.vault import Vault

CANARY = "Zq7-TOKENS-\u00fc\u00df-81c2"


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(16):
        prompt = " ".join(["clause"] * (i * 3 + 1)) + f" {CANARY} number {i}?"
        turns = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "It holds. " * (1 + i % 4)},
        ]
        if i % 3 == 0:
            turns.insert(0, {"role": "system", "content": "You are a careful lawyer."})
        if i % 5 == 0:
            turns += [
                {"role": "user", "content": "And then?"},
                {"role": "assistant", "content": "Nothing more."},
            ]
        rows.append({"messages": turns})
    return rows


Env = tuple[workspace.Workspace, Vault, Registry]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Env]:
    """A workspace with base model ``tiny`` and dataset ``notes`` (chat) and ``docs`` (text)."""
    import json

    root = tmp_path_factory.mktemp("tokens")
    ws, _ = workspace.init(root / "ws")
    vault = Vault.create(ws, "token stats passphrase", "alice", target_s=0)
    notes = root / "notes.jsonl"
    notes.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"doc {i} " * i}) + "\n" for i in range(1, 9)))
    with Registry.open(ws, audit_key=vault.audit_key) as reg:
        import_model(ws, reg, tiny_llama, "tiny")
        datasets.import_file(vault, reg, notes, "notes", eval_fraction=0.25)
        datasets.import_file(vault, reg, docs, "docs", eval_fraction=0)
        yield ws, vault, reg


def _independent(tokenizer: Any, rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(tokens, prompt tokens) per row, straight from the tokenizer and its template."""
    out = []
    for row in rows:
        messages = row["messages"]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = tokenizer.apply_chat_template(
            messages[:first_answer], tokenize=False, add_generation_prompt=True
        )
        n = len(tokenizer(full, add_special_tokens=False)["input_ids"])
        p = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        out.append((n, p))
    return out


def test_truncation_matches_an_independent_count_and_training(env: Env, tiny_llama: Path) -> None:
    _, vault, reg = env
    rows = datasets.load_rows(vault, datasets.resolve(reg, "notes"))
    tokenizer = tokens.load_tokenizer(tiny_llama)
    lengths, first, masking = tokens.measure(rows, tokenizer)
    assert masking == "assistant"
    expected = _independent(tokenizer, rows)
    assert lengths == [n for n, _ in expected]
    assert first == [p for _, p in expected]
    stats = TokenStats(
        "notes@1", "x", "tiny", "y", lengths, first, "".join(r["split"][0] for r in rows)
    )
    prompts = sorted(p for _, p in expected)
    # Cut-offs at which some examples are cut, some lose their answer, and some keep all.
    cutoffs = sorted({16, prompts[len(prompts) // 2], prompts[-1], max(lengths), 4096})
    assert len(cutoffs) >= 4
    seen_lost = False
    for limit in cutoffs:
        cut = truncation(stats, limit)
        assert cut.examples == len(rows)
        assert cut.truncated == sum(1 for n, _ in expected if n > limit)
        assert cut.answer_lost == sum(1 for _, p in expected if p >= limit)
        assert cut.truncated_share == cut.truncated / len(rows)
        seen_lost |= 0 < cut.answer_lost < cut.truncated
        # Training's own tokenisation cuts and drops exactly these.
        settings = DataSettings(max_seq_length=limit)
        kept_train = effective_lengths(stats, limit)
        if not kept_train:
            with pytest.raises(DatasetError, match="no training example is left"):
                tokenise(rows, tokenizer, settings)
            continue
        done = tokenise(rows, tokenizer, settings)
        assert (done.truncated, done.dropped) == (cut.truncated, cut.answer_lost)
        assert sorted(len(e.input_ids) for e in done.train) == sorted(kept_train)
        assert sum(len(e.input_ids) for e in done.train + done.eval) == cut.kept_tokens
    assert seen_lost
    train = truncation(stats, 16, split="train")
    assert train.examples == len(stats.indices("train")) == stats.splits.count("t")


def test_arithmetic_on_hand_made_statistics() -> None:
    stats = TokenStats("d@1", "a", "m", "b", [10, 50, 50, 1], [4, 45, 8, 1], "tete")
    cut = truncation(stats, 40)
    assert (cut.truncated, cut.answer_lost, cut.tokens, cut.kept_tokens) == (2, 2, 111, 50)
    assert cut.answer_lost_share == 0.5
    assert truncation(stats, 40, loss_on="all").answer_lost == 1  # only the 1-token example
    assert effective_lengths(stats, 40) == [10, 40]
    assert effective_lengths(stats, 40, split=None, over_length="drop") == [10]
    assert effective_lengths(stats, 40, split="eval", loss_on="all") == [40]
    assert stats.lengths_of("eval") == [50, 1]
    assert stats.summary()["max"] == 50
    with pytest.raises(UsageError, match="max_seq_length must be a positive"):
        truncation(stats, 0)
    with pytest.raises(UsageError, match="unknown loss_on"):
        truncation(stats, 8, loss_on="user")
    assert TokenStats.from_bytes(stats.to_bytes(), "x") == stats


def _search(home: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for path in sorted(home.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {n!r}" for n in needles if n in data]
    return hits


def test_job_caches_encrypted_and_the_cache_is_reused(
    env: Env, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, vault, reg = env
    assert token_cache.cached_token_stats(vault, reg, "notes", "tiny") is None
    request = token_cache.token_stats_request(vault, reg, "notes", "tiny")
    line = request.request_line()
    assert vault.master_key.hex().encode() not in line
    assert request.audit_key is None
    assert sorted(request.keys) == sorted(
        [datasets.resolve(reg, "notes")["object_id"], token_cache.CACHE_KEY_NAME]
    )
    stages: list[str] = []
    stats = token_cache.compute_token_stats(
        vault,
        reg,
        "notes",
        "tiny",
        on_event=lambda e: stages.append(getattr(e, "stage", e.type)),
        timeout=300,
    )
    assert "tokenizing" in stages
    assert stages[-1] == "result"
    rows = datasets.load_rows(vault, datasets.resolve(reg, "notes"))
    lengths, first, _ = tokens.measure(rows, tokens.load_tokenizer(tiny_llama))
    assert (stats.lengths, stats.first_learned) == (lengths, first)
    assert stats.splits == "".join(r["split"][0] for r in rows)
    assert (stats.dataset, stats.model) == ("notes@1", "tiny")

    # Reused: no second job (run_job would fail the test), same numbers, torch-free read.
    def no_job(*args: object, **kwargs: object) -> None:
        raise AssertionError("a second job was started")

    monkeypatch.setattr(token_cache, "run_job", no_job)
    assert token_cache.compute_token_stats(vault, reg, "notes@1", "tiny") == stats
    assert token_cache.cached_token_stats(vault, reg, "notes", "tiny") == stats

    # Encrypted: neither the rows' text nor the statistics' JSON lies anywhere in plaintext.
    entry = token_cache.cache_path(ws, datasets.resolve(reg, "notes"), reg.models.get("tiny"))
    assert entry.is_file()
    assert entry.parent == ws.datasets_dir / "token-stats"
    needles = [CANARY.encode(), CANARY.encode("utf-16-le"), b"first_learned", b'"lengths"']
    assert _search(ws.home, needles) == []
    assert b"first_learned" in stats.to_bytes()  # the search would find it in plaintext


def test_damaged_moved_or_stale_entries_are_misses(env: Env) -> None:
    ws, vault, reg = env
    notes, docs = datasets.resolve(reg, "notes"), datasets.resolve(reg, "docs")
    model = reg.models.get("tiny")
    key = token_cache.cache_key(vault)
    stats = TokenStats("docs@1", docs["sha256"], "tiny", model["sha256"], [3], [1], "t")
    path = token_cache.write_cache(ws, docs, model, key, stats)
    assert token_cache.read_cache(ws, docs, model, key) == stats
    # Another version's entry copied under this name fails its object id.
    other = token_cache.cache_path(ws, notes, model)
    saved = other.read_bytes() if other.exists() else None
    other.write_bytes(path.read_bytes())
    assert token_cache.read_cache(ws, notes, model, key) is None
    # Damaged.
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    assert token_cache.read_cache(ws, docs, model, key) is None
    # Stale: measured on other content than the registry now records.
    token_cache.write_cache(ws, docs, model, key, stats)
    assert token_cache.read_cache(ws, {**docs, "sha256": "0" * 64}, model, key) is None
    # A stranger's master key cannot read it.
    assert token_cache.read_cache(ws, docs, model, bytes(32)) is None
    if saved is not None:
        other.write_bytes(saved)
    else:
        other.unlink()


def test_deleting_a_version_deletes_its_entries(env: Env, tmp_path: Path) -> None:
    ws, vault, reg = env
    source = tmp_path / "gone.jsonl"
    source.write_text('{"text": "short lived"}\n{"text": "another"}\n')
    version, _ = datasets.import_file(vault, reg, source, "gone", eval_fraction=0)
    model = reg.models.get("tiny")
    stats = TokenStats("gone@1", version["sha256"], "tiny", model["sha256"], [4, 2], [1, 1], "tt")
    path = token_cache.write_cache(ws, version, model, token_cache.cache_key(vault), stats)
    assert token_cache.cached_token_stats(vault, reg, "gone", "tiny") == stats
    datasets.delete_version(vault, reg, version)
    assert not path.exists()
    with pytest.raises(NotFoundError):
        token_cache.cached_token_stats(vault, reg, "gone", "tiny")
    with pytest.raises(NotFoundError, match="no base model named 'nope'"):
        token_cache.cached_token_stats(vault, reg, "notes", "nope")


def test_the_train_pages_lengths_come_from_the_cache_alone(env: Env, tmp_path: Path) -> None:
    """The desktop app's estimate reads the cache and never measures (a tokenizer would load
    transformers into the window's process); once measured, it equals the CLI's lengths."""
    from appliance.training.config import TrainConfig
    from appliance.training.lengths import cached_training_lengths, training_lengths

    _, vault, reg = env
    memos = tmp_path / "memos.jsonl"
    memos.write_text("".join(f'{{"text": "memo {i} {"word " * i}"}}\n' for i in range(1, 7)))
    datasets.import_file(vault, reg, memos, "memos", eval_fraction=0)
    config = TrainConfig()
    config.data.max_seq_length = 8
    assert cached_training_lengths(vault, reg, "tiny", "memos", config) is None
    assert cached_training_lengths(vault, reg, "tiny", "no-such-dataset", config) is None
    measured = training_lengths(vault, reg, "tiny", "memos", config)  # runs the token-stats job
    assert measured is not None
    assert max(measured) == 8  # cut at max_seq_length, as training cuts
    assert cached_training_lengths(vault, reg, "tiny", "memos", config) == measured

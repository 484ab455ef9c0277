"""The production gate end to end: ``adapter golden``, then ``adapter tag`` scoring versions
with real ``eval`` jobs on the tiny model, refusing, overriding, and rescoring stale figures."""

from __future__ import annotations

from pathlib import Path

from appliance import datasets
from appliance.registry import Registry
from appliance.registry.refs import os_user
from appliance.workspace import Workspace
from tests.helpers.adapters import PASSPHRASE, make_adapter, open_store
from tests.helpers.cli import CliRunner
from tests.helpers.training import write_jsonl

ENV = {"APPLIANCE_PASSPHRASE": PASSPHRASE}


def _golden_rows(topic: str) -> list[dict[str, object]]:
    """Questions with long answers: the gate compares answer loss, and no greedy answers are
    generated (none is a short reference), which keeps the jobs quick."""
    answer = " ".join([f"Here is a long and careful answer about {topic}."] * 5)
    return [
        {
            "messages": [
                {"role": "user", "content": f"Question {i} about {topic}?"},
                {"role": "assistant", "content": f"{answer} ({i})"},
            ]
        }
        for i in range(3)
    ]


def _figure(reg: Registry, ref: str, golden: str) -> float:
    rows = [r for r in reg.evaluations.all(ref) if r["dataset"] == golden]
    return float(rows[-1]["metrics"]["answer_loss"])


def test_gate_scores_refuses_overrides_and_rescores_stale_figures(
    ws: Workspace, cli: CliRunner, tiny_llama: Path, tmp_path: Path
) -> None:
    vault, reg = open_store(ws)
    with reg:
        # legal@1 barely moves the base; legal@2 blows up the LM head's logits at random, so
        # its distributions are sharp and wrong: a far higher answer loss.
        make_adapter(vault, reg, tiny_llama, adapter_name="legal", std=0.001, seed=1)
        make_adapter(
            vault, reg, tiny_llama, adapter_name="legal", std=5.0, seed=2, targets=("lm_head",)
        )
        for version, topic in ((1, "rivers"), (2, "mountains")):
            source = write_jsonl(tmp_path / f"golden{version}.jsonl", _golden_rows(topic))
            datasets.import_file(vault, reg, source, "golden", eval_fraction=0)

        # Without a golden set the tag moves as it always did, with no scoring.
        first = cli("adapter", "tag", "legal@2", "production", env=ENV)
        assert first.returncode == 0, first.stderr
        assert reg.evaluations.all() == []

        attached = cli("adapter", "golden", "legal", "--dataset", "golden@1", env=ENV)
        assert attached.returncode == 0, attached.stderr

        # The candidate has no figures: both versions are scored in one job, then compared.
        better = cli("adapter", "tag", "legal@1", "production", env=ENV)
        assert better.returncode == 0, better.stderr
        assert "Scoring legal@1, legal@2 on golden set golden@1..." in better.stderr
        good, bad = _figure(reg, "legal@1", "golden@1"), _figure(reg, "legal@2", "golden@1")
        assert good < bad
        assert f"answer loss {good:.4f} vs legal@2 answer loss {bad:.4f}; passed" in better.stdout
        assert reg.adapters.version("legal@production")["ref"] == "legal@1"

        # The worse version is refused with both figures (already stored: no new job).
        scored = len(reg.evaluations.all())
        refused = cli("adapter", "tag", "legal@2", "production", env=ENV)
        assert refused.returncode == 1
        assert refused.err_lines[-1] == (
            f"error: refused: legal@2 has answer loss {bad:.4f} on golden set golden@1, worse "
            f"than legal@1 in production (answer loss {good:.4f}); improve the adapter, or tag "
            'it anyway with --override "REASON" (recorded in the audit log)'
        )
        assert len(reg.evaluations.all()) == scored
        assert reg.adapters.version("legal@production")["ref"] == "legal@1"

        forced = cli(
            "adapter", "tag", "legal@2", "production", "--override", "demo for the board", env=ENV
        )
        assert forced.returncode == 0, forced.stderr
        assert reg.adapters.version("legal@production")["ref"] == "legal@2"
        audit = reg.audit_rows(action="adapter.tag")[-1]
        assert audit["object"] == "legal@2"
        assert audit["user"] == os_user()
        assert audit["details"]["override"] == "demo for the board"
        assert audit["details"]["gate"]["candidate_figure"] == bad
        assert audit["details"]["gate"]["production_figure"] == good

        # A new golden set version: the stored figures are stale and are computed again.
        moved = cli("adapter", "golden", "legal", "--dataset", "golden@2", env=ENV)
        assert moved.returncode == 0, moved.stderr
        back = cli("adapter", "tag", "legal@1", "production", env=ENV)
        assert back.returncode == 0, back.stderr
        assert (
            "Scoring legal@1, legal@2 on golden set golden@2 (figures on golden@1 are stale)"
            in back.stderr
        )
        assert _figure(reg, "legal@1", "golden@2") < _figure(reg, "legal@2", "golden@2")
        assert _figure(reg, "legal@1", "golden@2") != good
        assert reg.adapters.version("legal@production")["ref"] == "legal@1"

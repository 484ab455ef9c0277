"""``appliance adapter list|show|tag`` over whatever the registry holds."""

from __future__ import annotations

import json

from appliance.registry import Registry
from appliance.workspace import Workspace
from tests.helpers.cli import CliRunner
from tests.helpers.registry_data import add_adapter, add_dataset, add_fake_model


def test_adapter_list_show_tag(ws: Workspace, cli: CliRunner) -> None:
    empty = cli("adapter", "list", "--json")
    assert empty.returncode == 0, empty.stderr
    assert json.loads(empty.stdout) == []
    with Registry.open(ws) as reg:
        add_fake_model(reg)
        add_dataset(reg)
        run_id, _ = add_adapter(reg, "contracts", eval_loss=1.5)
        add_adapter(reg, "contracts", eval_loss=1.25)

    listed = json.loads(cli("adapter", "list", "--json").stdout)
    assert [a["ref"] for a in listed] == ["contracts@1", "contracts@2"]
    assert listed[0]["base_model"] == "base"
    assert listed[0]["dataset"] == "docs"
    assert listed[1]["metrics"]["eval_loss"] == 1.25

    tagged = cli("adapter", "tag", "contracts@1", "production")
    assert tagged.returncode == 0, tagged.stderr
    assert "Tagged contracts@1 as production" in tagged.stdout
    moved = cli("adapter", "tag", "contracts@2", "production")
    assert "moved from version 1" in moved.stdout

    shown = json.loads(cli("adapter", "show", "contracts@production", "--json").stdout)
    assert shown["ref"] == "contracts@2"
    assert shown["tags"] == ["production"]
    assert shown["base_model"]["name"] == "base"
    assert shown["dataset"]["version"] == 1
    assert shown["config"]["lora_r"] == 8
    assert shown["lib_versions"]["transformers"] == "5.24.0"
    first = json.loads(cli("adapter", "show", "contracts@1", "--json").stdout)
    assert first["run"]["id"] == run_id

    # Lineage the other way: what was made from a dataset version, from a base model.
    made_from = cli("dataset", "show", "docs@1", "--rows", "0", "--json")
    assert made_from.returncode == 0, made_from.stderr
    assert json.loads(made_from.stdout)["adapters"] == ["contracts@1", "contracts@2"]
    base = json.loads(cli("model", "show", "base", "--json").stdout)
    assert base["adapters"] == ["contracts@1", "contracts@2"]

    table = cli("adapter", "list")
    assert "contracts@2" in table.stdout
    assert "production" in table.stdout
    assert "1.2500" in table.stdout

    missing = cli("adapter", "show", "contracts@7")
    assert missing.returncode == 1
    assert missing.err_lines == [
        "error: adapter contracts@7 does not exist (versions of contracts: 1, 2; tags: production)"
    ]
    bad = cli("adapter", "tag", "contracts@1", "9lives")
    assert bad.returncode == 2
    assert "invalid tag" in bad.err_lines[-1]

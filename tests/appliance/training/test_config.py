"""TrainConfig: defaults, presets, --set parsing, cross-field checks, JSON round trip."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from appliance.errors import TrainingError, UsageError
from appliance.training import config as cfg
from appliance.training import settings as st
from appliance.training.config import ConfigError, TrainConfig


def test_every_field_has_a_docstring() -> None:
    # The GUI shows these as help texts; a field without one would show nothing.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cfg))
    missing = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in {
            "TrainConfig",
            "LoraSettings",
            "OptimSettings",
            "DataSettings",
            "ScheduleSettings",
        }:
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    if not is_doc:
                        missing.append(f"{node.name}.{ast.unparse(stmt.target)}")
    assert missing == []


def test_defaults_are_the_balanced_preset() -> None:
    assert st.preset("balanced") == TrainConfig()
    c = TrainConfig()
    assert c.method == "qlora"
    assert c.data.loss_on == "assistant"
    assert c.lora.target_modules == "all-linear"
    assert c.schedule.effective_batch_size == 16


def test_presets_have_one_line_explanations_and_differ() -> None:
    configs = {name: p.config() for name, p in st.PRESETS.items()}
    assert set(configs) == {"quick-test", "balanced", "thorough"}
    for p in st.PRESETS.values():
        assert p.summary
        assert "\n" not in p.summary
    assert configs["quick-test"].schedule.max_steps == 30
    assert configs["quick-test"].lora.target_modules == ["q_proj", "v_proj"]
    assert configs["thorough"].lora.rank == 64
    assert configs["thorough"].optim.learning_rate == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="quick-test, balanced, thorough"):
        st.preset("fast")


@pytest.mark.parametrize(
    ("assignment", "path", "expected"),
    [
        ("lora.rank=32", ("lora", "rank"), 32),
        ("rank=8", ("lora", "rank"), 8),
        ("lr=1e-4", ("optim", "learning_rate"), 1e-4),
        ("alpha=64", ("lora", "alpha"), 64.0),
        ("scheduler=Linear", ("optim", "scheduler"), "linear"),
        ("gradient_checkpointing=off", (None, "gradient_checkpointing"), False),
        ("gradient_checkpointing=YES", (None, "gradient_checkpointing"), True),
        ("method=lora", (None, "method"), "lora"),
        ("target_modules=q,v", ("lora", "target_modules"), ["q_proj", "v_proj"]),
        ("target_modules=all-linear", ("lora", "target_modules"), "all-linear"),
        (
            'target_modules=["o_proj", "gate", "o_proj"]',
            ("lora", "target_modules"),
            ["gate_proj", "o_proj"],
        ),
        ("max_seq_length=2_048", ("data", "max_seq_length"), 2048),
        ("over_length=drop", ("data", "over_length"), "drop"),
        ("loss_on=all", ("data", "loss_on"), "all"),
        ("compute_dtype=bf16", (None, "compute_dtype"), "bf16"),
    ],
)
def test_set_coerces_types(assignment: str, path: tuple[str | None, str], expected: object) -> None:
    c = st.build_config("balanced", [assignment])
    section, name = path
    holder = getattr(c, section) if section else c
    assert getattr(holder, name) == expected
    assert type(getattr(holder, name)) is type(expected)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("rank=abc", "setting lora.rank must be a whole number; got 'abc'"),
        ("rank=1.5", "setting lora.rank must be a whole number"),
        ("scheduler=step", "setting optim.scheduler must be one of linear, cosine, constant"),
        ("over_length=cut", "must be one of truncate, drop"),
        ("compute_dtype=int8", "must be one of auto, bf16, fp16, fp32"),
        ("gradient_checkpointing=maybe", "must be true or false"),
        ("lr=nan", "setting optim.learning_rate must be a number"),
        ("target_modules=[1, 2]", "setting lora.target_modules must be all-linear"),
        (
            "target_modules=" + "[" * 50_000 + "]" * 50_000,
            "; got '" + "[" * 60 + "'... (100,000 characters)",
        ),
        ("colour=blue", "unknown training setting 'colour'; known settings: compute_dtype"),
        ("rank", "--set takes key=value"),
        ("=3", "--set takes key=value"),
    ],
)
def test_set_errors_name_the_key_and_allowed_values(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        st.build_config("balanced", [assignment])
    assert message in str(info.value)
    assert isinstance(info.value, UsageError)  # exit code 2 on the command line


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["rank=0"], "lora.rank is 0; set it between 1 and 1024"),
        (["dropout=1"], "lora.dropout is 1.0; set it from 0 to below 1"),
        (["alpha=0"], "lora.alpha is 0.0; set it above 0, e.g. 2 x rank = 32"),
        (["lr=2"], "optim.learning_rate is 2.0"),
        (["target_modules= , "], "lora.target_modules is empty"),
        (["target_modules=q,all-linear"], "mixes all-linear with names"),
        (["target_modules=q-proj"], "'q-proj', which is not a module name"),
        (["warmup_steps=5", "warmup_ratio=0.1"], "set one of them to 0"),
        (["max_steps=10", "warmup_steps=10"], "lower warmup_steps or raise max_steps"),
        (["epochs=0"], "set epochs above 0 (e.g. 1) or max_steps above 0"),
        (["micro_batch_size=0"], "schedule.micro_batch_size is 0"),
        (["keep_last=0"], "keep at least 1 checkpoint"),
        (["eval_every=-1"], "schedule.eval_every is -1"),
        (["max_seq_length=8"], "data.max_seq_length is 8"),
        (["method=lora", "compute_dtype=fp16"], "fp16 works only with method qlora"),
        (["seed=-1"], "seed is -1"),
    ],
)
def test_invalid_combinations_say_what_to_change(assignments: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid training config") as info:
        st.build_config("balanced", assignments)
    assert message in str(info.value)


def test_epochs_are_ignored_when_max_steps_is_set() -> None:
    c = st.build_config("balanced", ["max_steps=20", "epochs=0"])
    assert c.schedule.max_steps == 20


def test_warmup_given_one_way_switches_the_other_off() -> None:
    c = st.build_config("balanced", ["warmup_steps=7"])
    assert (c.optim.warmup_steps, c.optim.warmup_ratio) == (7, 0)
    assert c.optim.warmup_for(100) == 7
    c = st.build_config("balanced", ["warmup_ratio=0.1"])
    assert c.optim.warmup_for(95) == 10
    assert c.optim.warmup_for(3) == 0


def test_compute_dtype_resolution() -> None:
    auto = TrainConfig()
    assert auto.resolve_compute_dtype(cuda=False, bf16_supported=False) == "fp32"
    assert auto.resolve_compute_dtype(cuda=True, bf16_supported=True) == "bf16"
    assert auto.resolve_compute_dtype(cuda=True, bf16_supported=False) == "fp16"
    lora = st.build_config("balanced", ["method=lora"])
    assert lora.resolve_compute_dtype(cuda=True, bf16_supported=False) == "fp32"
    fp16 = st.build_config("balanced", ["compute_dtype=fp16"])
    with pytest.raises(ConfigError, match="fp16 is not supported on CPU; use fp32 or auto"):
        fp16.resolve_compute_dtype(cuda=False, bf16_supported=False)
    bf16 = st.build_config("balanced", ["compute_dtype=bf16"])
    with pytest.raises(ConfigError, match="no bf16 support; set compute_dtype to auto"):
        bf16.resolve_compute_dtype(cuda=True, bf16_supported=False)


def test_json_round_trip_through_the_run_folder(tmp_path: Path) -> None:
    original = st.build_config("quick-test", ["lr=3e-4", "target_modules=q,k,v", "seed=7"])
    path = cfg.save_config(original, tmp_path)
    assert path == tmp_path / "config.json"
    data = json.loads(path.read_text())
    assert data["schema"] == cfg.CONFIG_SCHEMA
    assert data["lora"]["target_modules"] == ["k_proj", "q_proj", "v_proj"]
    assert cfg.load_config(tmp_path) == original
    assert cfg.load_config(path) == original
    assert (path.stat().st_mode & 0o777) == 0o600
    assert not list(tmp_path.glob("*.tmp"))
    assert dataclasses.asdict(TrainConfig.from_dict(original.to_dict())) == dataclasses.asdict(
        original
    )


def test_missing_fields_take_defaults_but_unknown_ones_are_refused() -> None:
    assert TrainConfig.from_dict({"lora": {"rank": 4}}).lora.rank == 4
    assert TrainConfig.from_dict({}) == TrainConfig()
    with pytest.raises(ConfigError, match=r"unknown setting lora\.rnak"):
        TrainConfig.from_dict({"lora": {"rnak": 4}})
    with pytest.raises(ConfigError, match="schema 99 is not supported"):
        TrainConfig.from_dict({"schema": 99})
    with pytest.raises(ConfigError, match=r"lora\.rank must be a whole number; got True"):
        TrainConfig.from_dict({"lora": {"rank": True}})
    with pytest.raises(ConfigError, match="the config must be a JSON object"):
        TrainConfig.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"lora\.dropout is nan"):
        TrainConfig.from_dict({"lora": {"dropout": float("nan")}})
    with pytest.raises(ConfigError, match="lora must be a JSON object"):
        TrainConfig.from_dict({"lora": 3})
    with pytest.raises(ConfigError, match="gradient_checkpointing must be true or false"):
        TrainConfig.from_dict({"gradient_checkpointing": "yes"})


def test_load_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"config\.json: training config not found"):
        cfg.load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TrainingError, match="cannot read the training config"):
        cfg.load_config(tmp_path)
    (tmp_path / "config.json").write_text('{"lora": {"rank": 0}}')
    with pytest.raises(TrainingError, match=r"config.json: invalid training config: lora.rank"):
        cfg.load_config(tmp_path)


def test_setting_keys_cover_every_field_and_bare_names_are_unique() -> None:
    keys = st.setting_keys()
    bare = [k.rsplit(".", 1)[-1] for k in keys]
    assert len(bare) == len(set(bare)), "bare --set names must stay unambiguous"
    assert "lora.rank" in keys
    assert "seed" in keys
    assert st.resolve_key("lr") == "optim.learning_rate"


def test_settings_help_covers_every_key_with_docs_and_defaults() -> None:
    infos = {info.key: info for info in st.settings_help()}
    assert set(infos) == set(st.setting_keys())
    assert all(info.help for info in infos.values())
    rank = infos["lora.rank"]
    assert rank.default == 16
    assert rank.allowed == "a whole number"
    assert rank.help.startswith("LoRA rank r")
    assert infos["optim.scheduler"].allowed == "one of linear, cosine, constant"
    assert infos["method"].help.startswith("qlora: 4-bit NF4 base")


@pytest.mark.parametrize(
    ("assignments", "key"),
    [
        (["rank=0"], "lora.rank"),
        (["rank=abc"], "lora.rank"),
        (["lr=-1"], "optim.learning_rate"),
        (["target_modules=q-proj"], "lora.target_modules"),
        (["warmup_steps=5", "warmup_ratio=0.1"], "optim.warmup_steps"),
        (["max_steps=10", "warmup_steps=10"], "optim.warmup_steps"),
        (["epochs=0"], "schedule.epochs"),
        (["max_seq_length=8"], "data.max_seq_length"),
        (["method=lora", "compute_dtype=fp16"], "compute_dtype"),
        (["seed=-1"], "seed"),
        (["gradient_checkpointing=maybe"], "gradient_checkpointing"),
    ],
)
def test_a_refusal_names_the_setting_a_form_shows_it_at(assignments: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        st.build_config("balanced", assignments)
    assert st.setting_named(str(info.value)) == key


def test_a_message_naming_no_setting_has_none() -> None:
    assert st.setting_named("invalid training config: the config must be a JSON object") is None

"""Generation: adapters side by side on one base, the ``generate`` job's stream, its refusals.

Tiny random LLaMA on CPU. The job tests start real children as the CLI and the desktop app do.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from appliance import adapters, workspace
from appliance.errors import IntegrityError, NotFoundError, UsageError
from appliance.generation import Generate, GenerationSettings, check_messages
from appliance.generation.client import GenerationSession
from appliance.generation.engine import Engine
from appliance.generation.plan import plan
from appliance.generation.protocol import Load
from appliance.generation.request import generate_request, load_command
from appliance.jobs import JobError, JobFailed, JobOutput
from appliance.registry import Registry
from appliance.vault import Vault
from tests.helpers.adapters import make_adapter, open_store

QUESTION = [{"role": "user", "content": "What is 3 plus one?"}]


@dataclass
class Store:
    vault: Vault
    reg: Registry
    one: str
    two: str


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Store]:
    """Base model ``tiny`` and two different adapters of it: legal@1 (all projections, r=4)
    and legal@2 (q/v only, r=8)."""
    ws, _ = workspace.init(tmp_path_factory.mktemp("generation") / "ws")
    vault, reg = open_store(ws)
    one = make_adapter(vault, reg, tiny_llama, adapter_name="legal", seed=1)
    two = make_adapter(
        vault, reg, tiny_llama, adapter_name="legal", seed=2, r=8, targets=("q_proj", "v_proj")
    )
    yield Store(vault, reg, one, two)
    reg.close()


def _load_alone(store: Store, ref: str | None) -> Engine:
    weights = [] if ref is None else [(ref, adapters.load(store.vault, store.reg, ref)[1])]
    folder = plan(store.vault.ws, store.reg, [store.one]).folder
    return Engine.load(folder, weights)


def test_switching_adapters_gives_the_logits_of_each_loaded_alone(store: Store) -> None:
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (24,)).tolist()
    loaded = plan(store.vault.ws, store.reg, [store.one, store.two])
    both = Engine.load(
        loaded.folder,
        [
            (store.one, adapters.load(store.vault, store.reg, store.one)[1]),
            (store.two, adapters.load(store.vault, store.reg, store.two)[1]),
        ],
    )
    # Back and forth, so switching is proven not to leave anything behind.
    sequence = [store.two, None, store.one, store.two, None, store.one]
    seen = {ref: both.logits(ids, ref) for ref in sequence}
    for ref in (store.one, store.two, None):
        alone = _load_alone(store, ref).logits(ids, ref)
        assert torch.allclose(seen[ref], alone, atol=1e-5), ref
    assert not torch.allclose(seen[store.one], seen[store.two], atol=1e-2)
    assert not torch.allclose(seen[store.one], seen[None], atol=1e-2)


def test_adapters_added_to_a_running_engine_match_those_loaded_with_it(store: Store) -> None:
    ids = list(range(7, 31))
    weights = {ref: adapters.load(store.vault, store.reg, ref)[1] for ref in (store.one, store.two)}
    folder = plan(store.vault.ws, store.reg, [store.one]).folder
    together = Engine.load(folder, list(weights.items()))
    later = Engine.load(folder, [])
    base = later.logits(ids, None)
    assert later.add(store.two, weights[store.two])
    assert later.add(store.one, weights[store.one])
    assert not later.add(store.one, weights[store.one])  # loaded already: nothing changes
    for ref in (store.one, store.two, None):
        assert torch.allclose(later.logits(ids, ref), together.logits(ids, ref), atol=1e-5), ref
    assert torch.allclose(later.logits(ids, None), base, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_on_a_gpu_the_base_is_4bit_and_switching_still_matches(store: Store) -> None:
    ids = list(range(5, 40))
    loaded = plan(store.vault.ws, store.reg, [store.one, store.two])
    both = Engine.load(
        loaded.folder,
        [(ref, adapters.load(store.vault, store.reg, ref)[1]) for ref in (store.one, store.two)],
    )
    assert both.precision.startswith("nf4-")
    assert both.device == "cuda:0"
    seen = {ref: both.logits(ids, ref) for ref in (store.two, None, store.one)}
    for ref in (store.one, store.two, None):
        alone = _load_alone(store, ref).logits(ids, ref)
        scale = float(alone.abs().max())
        assert float((seen[ref] - alone).abs().max()) <= 1e-2 * scale, ref
    answer = both.generate(
        both.prompt_ids(QUESTION), store.one, GenerationSettings(max_new_tokens=8)
    )
    assert answer.tokens == 8


def test_greedy_answers_repeat_and_sampling_follows_its_seed(store: Store) -> None:
    engine = _load_alone(store, store.one)
    prompt = engine.prompt_ids(QUESTION)
    greedy = GenerationSettings(max_new_tokens=8)
    first = engine.generate(prompt, store.one, greedy)
    assert engine.generate(prompt, store.one, greedy).token_ids == first.token_ids
    hot = GenerationSettings(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=11)
    drawn = engine.generate(prompt, store.one, hot).token_ids
    assert engine.generate(prompt, store.one, hot).token_ids == drawn
    assert engine.generate(prompt, store.one, hot.replace(seed=12)).token_ids != drawn


def test_the_job_streams_tokens_in_order_then_the_answer(store: Store) -> None:
    request, _ = generate_request(store.vault, store.reg, [store.one, "legal"])
    with GenerationSession(request) as session:
        loaded = session.start()
        assert loaded["base_model"] == "tiny"
        assert loaded["adapters"] == [store.one, store.two]
        assert loaded["aliases"]["legal"] == store.two
        assert loaded["precision"] == "fp32"

        settings = GenerationSettings(max_new_tokens=12)
        events = list(session.ask(Generate("q", "legal", QUESTION, settings)))
        *tokens, answer = events
        assert answer["event"] == "answer"
        assert answer["adapter"] == store.two
        assert [t["event"] for t in tokens] == ["token"] * len(tokens)
        indexes = [t["index"] for t in tokens]
        assert indexes == sorted(set(indexes))
        assert "".join(t["text"] for t in tokens) == answer["text"]
        assert answer["tokens"] == 12
        assert answer["finish"] == "length"
        assert answer["prompt_tokens"] > 0
        assert answer["tokens_per_s"] > 0

        # The same question to the base model in the same process: no reload, another answer.
        base = list(session.ask(Generate("b", None, QUESTION, settings)))[-1]
        assert base["adapter"] is None
        assert base["text"] != answer["text"]

        # Refusals are per question: the session goes on.
        with pytest.raises(UsageError, match="the prompt is empty"):
            list(session.ask(Generate("e", None, [{"role": "user", "content": "  "}], settings)))
        novel = [{"role": "user", "content": "one two three four " * 200}]
        with pytest.raises(UsageError, match=r"the prompt is \d+ tokens, and the model's context"):
            list(session.ask(Generate("long", None, novel, settings)))
        with pytest.raises(UsageError, match="adapter other@1 is not loaded"):
            list(session.ask(Generate("x", "other@1", QUESTION, settings)))

        # A stop ends the answer being generated, early.
        long = GenerationSettings(max_new_tokens=400)
        stream = session.ask(Generate("s", store.one, QUESTION, long))
        assert next(stream)["event"] == "token"
        session.stop_answer()
        stopped = list(stream)[-1]
        assert stopped["finish"] == "stopped"
        assert stopped["tokens"] < 400
        assert session.alive
    assert session.close() == 0
    result = [e for e in session.events if e.type == "result"]
    assert result[0].to_dict()["data"] == {"answers": 3}


def test_a_running_session_loads_more_adapters_without_restarting(store: Store) -> None:
    request, _ = generate_request(store.vault, store.reg, [], model="tiny")
    with GenerationSession(request) as session:
        assert session.start()["adapters"] == []
        pid = session.pid
        command, _ = load_command(store.vault, store.reg, ["legal@1"], "tiny")
        added = session.load(command)
        assert added["adapters"] == [store.one]
        assert added["aliases"] == {"legal@1": store.one}
        settings = GenerationSettings(max_new_tokens=6)
        answer = list(session.ask(Generate("a", "legal@1", QUESTION, settings)))[-1]
        assert answer["adapter"] == store.one
        assert answer["tokens"] == 6
        # Keys for other objects than the ones named: the child cannot read the adapter.
        stolen = Load("x", [store.two], command.keys)
        with pytest.raises(UsageError, match="this job was not given the key of adapter legal"):
            session.load(stolen)
        with pytest.raises(JobError, match="no adapter named 'other'"):
            session.load(Load("y", ["other@1"], {}))
        assert session.alive
        assert session.pid == pid
    assert session.close() == 0


def test_cancel_ends_the_child(store: Store) -> None:
    request, _ = generate_request(store.vault, store.reg, [store.one])
    session = GenerationSession(request)
    session.start()
    stream = session.ask(Generate("c", store.one, QUESTION, GenerationSettings(max_new_tokens=400)))
    assert next(stream)["event"] == "token"
    started = time.monotonic()
    session.cancel()
    with pytest.raises(JobError, match="cancelled"):
        list(stream)
    assert session.close() == 130
    assert time.monotonic() - started < 30
    failed = [e for e in session.events if isinstance(e, JobFailed)]
    assert failed[0].kind == "cancelled"
    assert not any(
        isinstance(e, JobOutput) and e.data.get("event") == "answer" for e in session.events
    )


# -- refusals before any process starts -----------------------------------------------------


def test_an_adapter_whose_base_model_was_deleted_is_refused(
    tmp_path: Path, tiny_llama: Path
) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    vault, reg = open_store(ws)
    with reg:
        ref = make_adapter(vault, reg, tiny_llama)
        folder = ws.home / reg.models.get("tiny")["path"]
        shutil.rmtree(folder)
        with pytest.raises(IntegrityError, match=r"model tiny: folder .* is missing; re-import"):
            generate_request(vault, reg, [ref])
        reg.conn.execute("UPDATE base_models SET deleted_at = 'now' WHERE name = 'tiny'")
        with pytest.raises(IntegrityError, match="trained on base model 'tiny', which was deleted"):
            generate_request(vault, reg, [ref])


def test_adapters_of_two_base_models_are_refused(tmp_path: Path, tiny_llama: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    vault, reg = open_store(ws)
    with reg:
        one = make_adapter(vault, reg, tiny_llama, model_name="tiny", adapter_name="a")
        other = make_adapter(vault, reg, tiny_llama, model_name="tiny2", adapter_name="b")
        with pytest.raises(UsageError, match="belong to different base models"):
            generate_request(vault, reg, [one, other])
        with pytest.raises(UsageError, match="an adapter runs only on its own base model"):
            generate_request(vault, reg, [one], model="tiny2")
        with pytest.raises(NotFoundError, match="no adapter named 'c'"):
            generate_request(vault, reg, ["c@1"])
        with pytest.raises(UsageError, match="name an adapter version"):
            generate_request(vault, reg, [])


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "the conversation is empty"),
        ([{"role": "user", "content": ""}], "the prompt is empty"),
        ([{"role": "robot", "content": "hi"}], "role 'robot'"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "must end"),
        ([{"role": "user", "content": 3}], "no text"),
    ],
)
def test_bad_conversations_are_refused(messages: list[dict[str, object]], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_messages(messages)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens is 0"),
        ({"temperature": -1}, "temperature is -1"),
        ({"top_p": 0}, "top_p is 0"),
        ({"seed": "x"}, "seed must be a whole number"),
        ({"colour": "blue"}, "unknown setting"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        GenerationSettings.from_dict(settings)

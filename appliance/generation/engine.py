"""A loaded base model with adapter versions beside it, answering one prompt at a time.

The base is loaded once, as training loads it (:func:`appliance.training.quant.load_base`):
NF4 4-bit on a GPU, fp32 on the CPU (where 4-bit only saves memory and costs time). Each
adapter is decrypted in memory and added to one PEFT model under its own name; answering with
another adapter is ``set_adapter``, answering with the base alone runs inside
``disable_adapter()``. So comparing versions side by side never reloads the model.

Decoding is a plain loop over the KV cache in the calling thread, so SIGTERM (the job's Cancel)
lands between two tokens and a stop request is checked after each token. Greedy unless the
settings ask for sampling.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliance import adapters
from appliance.adapters import AdapterWeights
from appliance.errors import UsageError
from appliance.generation.protocol import with_system_prompt
from appliance.generation.settings import GenerationSettings

TokenCallback = Callable[[int, str], None]
"""Called with ``(index, text)`` for each new piece of an answer."""

REPLACEMENT = "\ufffd"


@dataclass
class Answer:
    """One generated answer and how it went."""

    text: str
    finish: str
    """``eos``, ``length`` or ``stopped``."""
    prompt_tokens: int
    tokens: int
    seconds: float
    token_ids: list[int]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        """The JSON-ready figures of an ``answer`` event."""
        return {
            "text": self.text,
            "finish": self.finish,
            "prompt_tokens": self.prompt_tokens,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
        }


def device_choice() -> tuple[bool, torch.dtype, str]:
    """``(cuda, dtype, precision label)``: 4-bit with bf16/fp16 compute on a GPU, fp32 on CPU."""
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return True, torch.bfloat16, "nf4-bf16"
        return True, torch.float16, "nf4-fp16"
    return False, torch.float32, "fp32"


class Engine:
    """A base model, its tokenizer and the adapters loaded beside it."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        columns: dict[str, str],
        *,
        device: str,
        precision: str,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.columns = columns
        """Adapter reference (``NAME@N``) -> its name inside the PEFT model."""
        self.device = device
        self.precision = precision
        self.context_length = _context_length(model)
        self.eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self._cache_arg = _cache_argument(model)

    @classmethod
    def load(cls, folder: Path, weights: list[tuple[str, AdapterWeights]]) -> Engine:
        """Load the base model in ``folder`` with each ``(reference, weights)`` beside it.

        Raises:
            IntegrityError: an adapter does not fit the model.
        """
        from transformers import AutoTokenizer

        from appliance.training.quant import load_base

        cuda, dtype, precision = device_choice()
        tokenizer = AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
        model = load_base(folder, dtype, four_bit=cuda, cuda=cuda)
        model.eval()
        engine = cls(model, tokenizer, {}, device="cuda:0" if cuda else "cpu", precision=precision)
        for ref, adapter in weights:
            engine.add(ref, adapter)
        return engine

    def add(self, ref: str, weights: AdapterWeights) -> bool:
        """Load adapter ``ref`` beside those loaded (the base stays); False if it was loaded.

        Raises:
            IntegrityError: the adapter does not fit the model.
        """
        if ref in self.columns:
            return False
        # PEFT keeps adapters in module dicts, whose keys may not contain '.'.
        name = f"adapter{len(self.columns)}"
        if not self.columns:
            self.model = adapters.apply_to(self.model, weights, adapter_name=name)
        else:
            adapters.add_to(self.model, weights, name)
        self.columns[ref] = name
        self.model.eval()
        return True

    # -- switching ----------------------------------------------------------------------------

    @contextmanager
    def use(self, adapter: str | None) -> Iterator[None]:
        """Run the block with adapter ``adapter`` (a loaded ``NAME@N``) or, for None, the base.

        Raises:
            UsageError: the adapter is not loaded.
        """
        if adapter is None:
            if self.columns:
                with self.model.disable_adapter():
                    yield
            else:
                yield
            return
        name = self.columns.get(adapter)
        if name is None:
            loaded = ", ".join(self.columns) or "none"
            raise UsageError(f"adapter {adapter} is not loaded in this session (loaded: {loaded})")
        self.model.set_adapter(name)
        yield

    # -- prompts ------------------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict[str, str]], system_prompt: str = "") -> list[int]:
        """The tokens of the conversation rendered with the model's chat template, ending with
        the assistant's turn opening (as training renders it: no extra special tokens).

        Raises:
            UsageError: the model has no chat template, or the prompt fills the context.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(
                "this base model's tokenizer has no chat template, so it cannot chat; use an "
                "instruct/chat model"
            )
        text = self.tokenizer.apply_chat_template(
            with_system_prompt(messages, system_prompt), tokenize=False, add_generation_prompt=True
        )
        ids = list(self.tokenizer(str(text), add_special_tokens=False)["input_ids"])
        if len(ids) >= self.context_length:
            raise UsageError(
                f"the prompt is {len(ids)} tokens, and the model's context holds "
                f"{self.context_length}; shorten it (in a chat: /reset drops the history)"
            )
        return ids

    # -- generating ---------------------------------------------------------------------------

    def generate(
        self,
        prompt_ids: list[int],
        adapter: str | None,
        settings: GenerationSettings,
        *,
        on_token: TokenCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Answer:
        """Answer the prompt with one adapter (or the base), streaming pieces to ``on_token``."""
        budget = min(settings.max_new_tokens, self.context_length - len(prompt_ids))
        generator = None
        if not settings.greedy:
            generator = torch.Generator(device=self.device)
            if settings.seed is not None:
                generator.manual_seed(settings.seed)
            else:
                generator.seed()
        out_ids: list[int] = []
        emitted = ""
        finish = "length"
        started = time.perf_counter()
        with self.use(adapter), torch.inference_mode():
            step = self.model(
                input_ids=torch.tensor([prompt_ids], device=self.device), use_cache=True
            )
            for _ in range(budget):
                token = _choose(step.logits[0, -1], settings, generator)
                if token in self.eos_ids:
                    finish = "eos"
                    break
                out_ids.append(token)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                # A character split across tokens decodes as U+FFFD until its last byte comes.
                if not text.endswith(REPLACEMENT) and len(text) > len(emitted):
                    if on_token is not None:
                        on_token(len(out_ids) - 1, text[len(emitted) :])
                    emitted = text
                if should_stop is not None and should_stop():
                    finish = "stopped"
                    break
                if len(out_ids) == budget:
                    break
                cache = getattr(step, "cache", None)
                if cache is None:
                    cache = step.past_key_values
                step = self.model(
                    input_ids=torch.tensor([[token]], device=self.device),
                    use_cache=True,
                    **{self._cache_arg: cache},
                )
        seconds = time.perf_counter() - started
        text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
        if on_token is not None and len(text) > len(emitted):
            on_token(len(out_ids) - 1, text[len(emitted) :])
        return Answer(
            text=text,
            finish=finish,
            prompt_tokens=len(prompt_ids),
            tokens=len(out_ids),
            seconds=seconds,
            token_ids=out_ids,
        )

    def logits(self, input_ids: list[int], adapter: str | None) -> torch.Tensor:
        """The logits of one sequence with one adapter (or the base), as float32 on the CPU."""
        with self.use(adapter), torch.inference_mode():
            out = self.model(input_ids=torch.tensor([input_ids], device=self.device))
        return out.logits[0].float().cpu()


def _choose(logits: torch.Tensor, settings: GenerationSettings, generator: Any) -> int:
    """The next token: the most likely one, or a draw at the temperature within top-p."""
    if settings.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest head of the distribution whose mass reaches top_p (at least one).
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < settings.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def _cache_argument(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.25 on
    (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        parameters = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _context_length(model: Any) -> int:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token that ends the assistant's turn: the generation config's and the tokenizer's."""
    found: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return found

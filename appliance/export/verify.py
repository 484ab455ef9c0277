"""Prove an export computes what the adapter computed: logits and greedy tokens compared.

The reference is the base in the export's precision with the adapter applied (unmerged). What
was written is reloaded from disk by an independent reader (transformers for safetensors and
GGUF, peft for an adapter folder) and run on the same prompts. The tolerance is a number of units
in the last place of the dtype at the logits' scale, plus, for GGUF, the quantisation error
expected of the type; the measured figures are returned whatever the outcome.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

GREEDY_TOKENS = 8
PROMPTS = (
    "What is the capital of France?",
    "Summarise the main obligations of the parties in one sentence.",
)
PLAIN_TEXT = "The quick brown fox jumps over the lazy dog. The answer is"

MANTISSA_BITS = {"fp32": 23, "bf16": 7, "fp16": 10}
ULPS = {"fp32": 64, "bf16": 8, "fp16": 8}
"""Allowed difference in units in the last place at the logits' scale. Merging reorders the
arithmetic (W x + B A x becomes (W + B A) x) in every layer, and the rounding differences add up
through the depth of the model; the figures measured are printed with every export."""
QUANT_REL = {"f16": 0.01, "q8_0": 0.1, "q4_0": 0.5}
"""Largest logits difference accepted from a GGUF type's quantisation, as a fraction of the
logits' scale: a sanity bound, as the effect depends on the model (measured maximum over every
position and vocabulary entry: SmolLM2-135M Q8_0 4.1%, F16 0.2%; a tiny random model Q4_0 26%).
The file itself is checked tightly against the same quantised weights in memory
(:func:`compare` of ``file_check``)."""


@dataclass
class Probe:
    """What a model computed on the probe prompts."""

    logits: list[torch.Tensor]
    """Per prompt, float32 logits of every position, shape (tokens, vocab)."""
    greedy: list[list[int]]
    """Per prompt, the first greedy tokens generated after it."""


def probe_prompts(tokenizer: Any) -> list[list[int]]:
    """Token ids of the probe prompts: chat prompts when there is a chat template, and text."""
    prompts: list[list[int]] = []
    for text in PROMPTS:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(text)["input_ids"]
        prompts.append(list(ids))
    prompts.append(list(tokenizer(PLAIN_TEXT)["input_ids"]))
    return prompts


def run_probe(model: Any, prompts: list[list[int]], greedy_tokens: int = GREEDY_TOKENS) -> Probe:
    """Logits of each prompt, and its greedy continuation decoded with the KV cache.

    Both sides of a comparison run this same code, so they take the same arithmetic path.
    """
    import torch

    logits: list[torch.Tensor] = []
    greedy: list[list[int]] = []
    with torch.inference_mode():
        for ids in prompts:
            out = model(input_ids=torch.tensor([ids]), use_cache=True)
            logits.append(out.logits[0].float().clone())
            tokens: list[int] = []
            step = out
            for _ in range(greedy_tokens):
                nxt = int(step.logits[0, -1].argmax())
                tokens.append(nxt)
                step = model(
                    input_ids=torch.tensor([[nxt]]),
                    past_key_values=step.past_key_values,
                    use_cache=True,
                )
            greedy.append(tokens)
    return Probe(logits, greedy)


def ulp(value: float, dtype: str) -> float:
    """The spacing of ``dtype`` numbers near ``value``."""
    if value <= 0:
        return 0.0
    return float(2.0 ** (math.floor(math.log2(value)) - MANTISSA_BITS[dtype]))


def tolerance(scale: float, dtype: str, gguf_type: str | None = None) -> float:
    """Allowed max absolute logits difference for an export at logits scale ``scale``."""
    tol = ULPS[dtype] * ulp(max(scale, 1e-3), dtype)
    if gguf_type is not None:
        tol += QUANT_REL[gguf_type] * scale
    return tol


def compare(
    reference: Probe,
    candidate: Probe,
    *,
    dtype: str,
    gguf_type: str | None = None,
    require_greedy: bool,
) -> dict[str, Any]:
    """The verification figures; ``passed`` says whether they are within tolerance.

    Args:
        reference: the unmerged adapter on the same-precision base.
        candidate: the export reloaded from disk.
        dtype: the precision of the reference, for the tolerance.
        gguf_type: the GGUF type, whose quantisation error is allowed on top.
        require_greedy: the greedy continuations must be identical (fp32 exports).
    """
    diffs = [
        float((r - c).abs().max()) for r, c in zip(reference.logits, candidate.logits, strict=True)
    ]
    scale = max(float(r.abs().max()) for r in reference.logits)
    max_diff = max(diffs)
    tol = tolerance(scale, dtype, gguf_type)
    matches = sum(
        _common_prefix(r, c) for r, c in zip(reference.greedy, candidate.greedy, strict=True)
    )
    total = sum(len(r) for r in reference.greedy)
    greedy_ok = matches == total or not require_greedy
    return {
        "prompts": len(diffs),
        "max_abs_diff": max_diff,
        "logits_scale": scale,
        "relative_diff": max_diff / scale if scale else 0.0,
        "tolerance": tol,
        "greedy_tokens_matching": matches,
        "greedy_tokens": total,
        "greedy_required": require_greedy,
        "passed": bool(max_diff <= tol and greedy_ok and math.isfinite(max_diff)),
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def verification_line(figures: dict[str, Any]) -> str:
    """One line for people: max difference, tolerance, scale, greedy tokens (and GGUF extras)."""
    line = (
        f"max |Δlogit| {figures['max_abs_diff']:.3g} (tolerance {figures['tolerance']:.3g}, "
        f"{100 * figures['relative_diff']:.3g}% of the logits' scale "
        f"{figures['logits_scale']:.3g}), "
        f"greedy tokens {figures['greedy_tokens_matching']}/{figures['greedy_tokens']}"
    )
    if "weight_error" in figures:
        line += f", max weight quantisation error {figures['weight_error']:.3g}"
    if "file_check" in figures:
        check = figures["file_check"]
        line += (
            f"; file vs its quantised weights in memory: max |Δlogit| "
            f"{check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g}), greedy "
            f"{check['greedy_tokens_matching']}/{check['greedy_tokens']}"
        )
    if "tokenizer_match" in figures:
        line += ", tokenizer " + ("identical" if figures["tokenizer_match"] else "DIFFERS")
    return line

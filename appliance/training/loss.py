"""The training loss: a token-level cross-entropy that never builds the whole logits tensor.

A causal LM's loss in stock transformers computes logits for every position (batch x sequence x
vocabulary, 49k-152k columns), upcasts them to fp32, and keeps them and their gradient for the
backward pass: at long sequences that is the largest tensor of the run. Here the decoder's last
hidden states are taken instead, only the positions that carry a label are kept (with loss on the
assistant's replies, often a third of the tokens or fewer), and the LM head and the
cross-entropy run over them in chunks of rows. Each chunk's gradient with respect to the hidden
states is computed in the forward pass and the chunk's logits are dropped at once, so the peak is
one chunk of logits and the LM head's matmul runs twice (forward, input gradient) as in the plain
path, not three times as with activation checkpointing of the loss.

The loss is returned as ``(sum of token losses, number of label tokens)``. The training step
divides the sum by the label tokens of the whole optimizer step (all its micro-batches), so every
label token weighs the same however the step is split into micro-batches or, later, processes.

Models whose logits are not a plain linear map of the last hidden state (soft-capping, logit
scaling) or whose LM head is trained take the plain path: full logits, the same cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from appliance.training.batching import IGNORE, Batch
from appliance.training.estimate import CHUNK_ELEMENTS

PLAIN_HEAD_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "olmo",
     "olmo2", "gemma", "starcoder2", "stablelm"}
)  # fmt: skip
"""Architectures whose logits are ``lm_head(final_norm(hidden))`` and nothing more."""


def chunk_rows(vocab: int) -> int:
    """Rows of logits computed at once for a vocabulary of ``vocab``."""
    return max(1, CHUNK_ELEMENTS // max(1, vocab))


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of ``cross_entropy(hidden @ weight.T, target)``, in chunks of rows.

    ``weight`` is frozen (no gradient is produced for it). The gradient with respect to
    ``hidden`` is computed chunk by chunk in the forward pass, in the hidden states' dtype, and
    scaled by the incoming gradient in the backward pass.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        rows: int,
    ) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if need_grad else None
        for start in range(0, hidden.shape[0], rows):
            h = hidden[start : start + rows].to(weight.dtype)
            y = target[start : start + rows]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y.unsqueeze(1)).squeeze(1)).sum()
            if grad is not None:
                # d(sum CE)/d(logits) = softmax - one_hot, computed in place over the logits.
                probs = logits.sub_(lse.unsqueeze(1)).exp_()
                probs[torch.arange(y.shape[0], device=y.device), y] -= 1.0
                grad[start : start + rows] = probs.to(weight.dtype) @ weight
            del logits
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Any:
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, rows: int | None = None
) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``target`` without whole logits.

    Args:
        hidden: (N, H) hidden states of the positions that carry a label.
        weight: (V, H) the LM head's weight; frozen.
        target: (N,) the labels (no ``IGNORE`` left).
        rows: rows per chunk; by default :func:`chunk_rows` of the vocabulary.
    """
    if weight.requires_grad:
        raise ValueError("linear_cross_entropy takes a frozen LM head")
    loss: torch.Tensor = _LinearCrossEntropy.apply(
        hidden, weight, target, rows or chunk_rows(weight.shape[0])
    )
    return loss


def logits_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The plain path: shifted, summed cross-entropy over whole logits in fp32."""
    shifted = logits[:, :-1, :].float()
    target = labels[:, 1:]
    loss = F.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)),
        target.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((target != IGNORE).sum())


def _causal_lm(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def hidden_state_loss_supported(model: Any) -> bool:
    """Whether the chunked path computes exactly the model's own logits for this model."""
    causal_lm = _causal_lm(model)
    config = getattr(causal_lm, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return False
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            return False
    head: Any = causal_lm.get_output_embeddings()
    decoder: Any = getattr(causal_lm, "get_decoder", lambda: None)()
    if decoder is None or type(head) is not torch.nn.Linear:
        return False
    return getattr(head, "bias", None) is None and not head.weight.requires_grad


def causal_lm_loss(model: Any, batch: Batch, *, chunked: bool = True) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy of ``batch`` and the number of label tokens in it.

    With ``chunked`` (and a model :func:`hidden_state_loss_supported` accepts), logits are
    computed only for the positions that carry a label, a chunk of rows at a time; otherwise
    from the model's full logits. Both give the same loss and gradients (to fp32 rounding).
    """
    if not (chunked and hidden_state_loss_supported(model)):
        return logits_cross_entropy(model(**batch.model_inputs()).logits, batch.labels)
    causal_lm = _causal_lm(model)
    hidden = causal_lm.get_decoder()(**batch.model_inputs()).last_hidden_state
    target = batch.labels[:, 1:]
    keep = target != IGNORE
    selected = hidden[:, :-1][keep]
    loss = linear_cross_entropy(selected, causal_lm.get_output_embeddings().weight, target[keep])
    return loss, int(selected.shape[0])

"""Micro-batches: which examples go together, in what order, and how they are laid out.

Right-padding a micro-batch to its longest example wastes every position after each shorter
example; with chat data of mixed lengths that can be most of the batch. Two remedies, both
deterministic functions of the seed and the position in the run (so a resumed run sees exactly
the batches an uninterrupted one would have):

* **Length-grouped order** (``grouped``): each epoch shuffles the examples with the seed, cuts
  the shuffled list into mega-batches of :data:`GROUP_MULTIPLE` micro-batches, sorts each
  mega-batch by length so that similar lengths share a micro-batch, and shuffles the micro-batches
  again. The micro-batch holding the longest example goes first, so a run that does not fit fails
  at its first step rather than hours in.
* **Packing** (``packed``): the examples of a micro-batch are laid end to end in one row, with
  position ids restarting at 0 for each and no attention mask: transformers then builds a
  block-diagonal causal mask (or, with flash attention, a variable-length kernel call), so no
  token attends across examples and no position is padding. Whether the model's attention
  honours that is checked on the model itself (:func:`packing_honoured`); where it does not, the
  run falls back to grouping.

The loss is a sum over label tokens divided by the label tokens of the whole optimizer step, so
neither remedy changes what a step optimises, only how much arithmetic is spent on padding.

With several processes the plan's micro-batch is the *global* micro-batch (``micro_batch_size x
processes`` examples, grouped by length like any other) and each process lays out its contiguous
share of it (:meth:`appliance.training.distributed.Group.share`, :meth:`BatchPlan.assemble`): the
shares are disjoint, together they hold every example once per epoch, and the position in the data
stays one integer, so a run resumes on any number of processes with the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from appliance.training.encoding import IGNORE, Example
from appliance.training.estimate import longest_micro_batch

__all__ = ["IGNORE", "Batch", "BatchPlan", "Example", "collate", "pack", "packing_honoured"]

Order = Literal["random", "grouped"]
Layout = Literal["padded", "packed"]

GROUP_MULTIPLE = 50
"""Micro-batches per mega-batch sorted by length in grouped order (Hugging Face's default)."""


@dataclass
class Batch:
    """A micro-batch as tensors: padded rows, or one packed row with restarting positions."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None = None
    """1 for real tokens, 0 for padding; None for a packed row (no padding at all)."""
    position_ids: torch.Tensor | None = None
    """Positions restarting at 0 for each packed example; None for padded rows."""
    real_tokens: int = field(default=0)
    """Tokens that are not padding."""

    @property
    def trained_tokens(self) -> int:
        """Tokens whose label the loss takes (labels are shifted by one: position 0 never)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    @property
    def computed_tokens(self) -> int:
        """Positions the model computes, padding included."""
        return int(self.input_ids.numel())

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            move(self.attention_mask),
            move(self.position_ids),
            self.real_tokens,
        )

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the model's forward."""
        inputs: dict[str, Any] = {"input_ids": self.input_ids}
        if self.attention_mask is not None:
            inputs["attention_mask"] = self.attention_mask
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad examples to the longest one; padding is masked and unlabelled."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.labels)
    return Batch(ids, labels, mask, None, sum(len(e.input_ids) for e in examples))


def pack(examples: Sequence[Example]) -> Batch:
    """Lay the examples end to end in one row, positions restarting at 0 for each.

    The first token of each example loses its label: in the shifted loss it would be predicted
    from the end of the previous example, which a separate sequence never is.
    """
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        ids.extend(example.input_ids)
        labels.append(IGNORE)
        labels.extend(example.labels[1:])
        positions.extend(range(len(example.input_ids)))
    return Batch(
        torch.tensor([ids], dtype=torch.long),
        torch.tensor([labels], dtype=torch.long),
        None,
        torch.tensor([positions], dtype=torch.long),
        len(ids),
    )


def layout_tokens(lengths: Sequence[int], layout: Layout) -> int:
    """Positions a micro-batch of examples of ``lengths`` computes in ``layout``."""
    if layout == "packed":
        return sum(lengths)
    return len(lengths) * max(lengths)


class BatchPlan:
    """Which examples each micro-batch of the run holds, from the seed alone.

    Micro-batch ``i`` of the run (0-based, across epochs) is micro-batch ``i % per_epoch`` of
    epoch ``i // per_epoch``; each epoch's arrangement depends only on the seed and the epoch
    number, so the position in the data is one integer: the micro-batches consumed.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        micro_batch_size: int,
        seed: int,
        *,
        order: Order = "random",
        layout: Layout = "padded",
        pad_id: int = 0,
    ) -> None:
        self.examples = list(examples)
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.order = order
        self.layout = layout
        self.pad_id = pad_id
        self.per_epoch = math.ceil(len(self.examples) / micro_batch_size)
        """Micro-batches in one pass over the examples."""
        self._epoch = -1
        self._groups: list[list[int]] = []

    def _generator(self, epoch: int) -> torch.Generator:
        # A private generator: the global RNG (dropout) is not touched by shuffling.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def groups(self, epoch: int) -> list[list[int]]:
        """Indices of the examples of each micro-batch of ``epoch`` (0-based), in order."""
        if epoch == self._epoch:
            return self._groups
        generator = self._generator(epoch)
        order = torch.randperm(len(self.examples), generator=generator).tolist()
        size = self.micro_batch_size
        if self.order == "random":
            groups = [order[i : i + size] for i in range(0, len(order), size)]
        else:
            groups = self._grouped(order, generator)
        self._epoch, self._groups = epoch, groups
        return groups

    def _grouped(self, order: list[int], generator: torch.Generator) -> list[list[int]]:
        size = self.micro_batch_size
        mega = size * GROUP_MULTIPLE
        length = [len(e.input_ids) for e in self.examples]
        groups: list[list[int]] = []
        for start in range(0, len(order), mega):
            # Stable sort, longest first: equal lengths keep their shuffled order.
            chunk = sorted(order[start : start + mega], key=lambda i: -length[i])
            groups.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
        shuffled = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        longest = max(range(len(shuffled)), key=lambda g: max(length[i] for i in shuffled[g]))
        shuffled.insert(0, shuffled.pop(longest))
        return shuffled

    def micro_batch(self, index: int) -> list[Example]:
        """The examples of micro-batch ``index`` of the run (0-based, across epochs)."""
        epoch, within = divmod(index, self.per_epoch)
        return [self.examples[i] for i in self.groups(epoch)[within]]

    def batch(self, index: int) -> Batch:
        """Micro-batch ``index`` as tensors, in the plan's layout."""
        return self.assemble(self.micro_batch(index))

    def assemble(self, examples: Sequence[Example]) -> Batch:
        """``examples`` as tensors in the plan's layout (a process's share of a micro-batch)."""
        return pack(examples) if self.layout == "packed" else collate(examples, self.pad_id)

    def epoch_at(self, micro_batches_done: int) -> float:
        """Fractional epochs after ``micro_batches_done`` micro-batches."""
        return micro_batches_done / self.per_epoch

    def padding_share(
        self, epoch: int, split: Callable[[list[int]], list[list[int]]] | None = None
    ) -> float:
        """Share of the positions computed in ``epoch`` that are padding (0 when packed).

        ``split`` cuts each micro-batch into the pieces actually computed (several processes
        each take a share of it); by default a micro-batch is computed whole.
        """
        computed = real = 0
        for group in self.groups(epoch):
            for piece in split(group) if split is not None else [group]:
                if not piece:
                    continue
                lengths = [len(self.examples[i].input_ids) for i in piece]
                computed += layout_tokens(lengths, self.layout)
                real += sum(lengths)
        return 1.0 - real / computed if computed else 0.0

    def longest_micro_batch(self) -> int:
        """Positions of the largest micro-batch any epoch can form in this layout (for random
        order an upper bound: the longest examples together)."""
        lengths = [len(e.input_ids) for e in self.examples]
        return longest_micro_batch(lengths, self.micro_batch_size, self.layout == "packed")


def total_steps(plan: BatchPlan, epochs: float, max_steps: int, accumulation: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or enough for ``epochs`` passes."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(epochs * plan.per_epoch / accumulation))


def packing_honoured(model: Any, device: str | torch.device, dtype: torch.dtype) -> bool:
    """Whether ``model`` keeps packed examples apart: packed logits equal separate ones.

    Runs two short sequences of different lengths through the model once packed (one row,
    positions restarting, no mask) and once each on its own, and compares the logits. An
    attention implementation that ignores restarting positions lets the second sequence see
    the first and fails the comparison by orders of magnitude. Call it on the base model before
    LoRA is attached and before any 4-bit layer could be repacked (it runs without gradients;
    :func:`appliance.training.quant.disable_cpu_repack` must already have run).
    """
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return False
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(3, vocab, (7,), generator=generator)
    second = torch.randint(3, vocab, (5,), generator=generator)
    packed_ids = torch.cat([first, second]).unsqueeze(0).to(device)
    positions = torch.cat([torch.arange(7), torch.arange(5)]).unsqueeze(0).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            # Without a cache: transformers looks for restarting positions only when there is
            # neither an attention mask nor a cache (training never uses one).
            packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False)
            alone = [
                model(input_ids=ids.unsqueeze(0).to(device), use_cache=False).logits[0].float()
                for ids in (first, second)
            ]
    except Exception:  # an architecture that refuses position ids without a mask: not honoured
        return False
    finally:
        model.train(was_training)
    expected = torch.cat(alone)
    scale = float(expected.abs().max()) or 1.0
    error = float((packed.logits[0].float() - expected).abs().max()) / scale
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    return error <= tolerance

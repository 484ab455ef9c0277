"""Batch plans: every example once per epoch, an order made by the seed, resumable anywhere."""

from __future__ import annotations

import pytest

from appliance.training.batching import IGNORE, BatchPlan, Example, collate, pack
from appliance.training.estimate import longest_micro_batch


def _examples(lengths: list[int]) -> list[Example]:
    return [Example(list(range(1, n + 1)), [IGNORE, *range(2, n + 1)]) for n in lengths]


LENGTHS = [(i * 37) % 90 + 5 for i in range(103)]  # 103 examples of 5-94 tokens


def _ids(plan: BatchPlan, index: int) -> list[int]:
    position = {id(e): i for i, e in enumerate(plan.examples)}
    return [position[id(e)] for e in plan.micro_batch(index)]


@pytest.mark.parametrize("order", ["random", "grouped"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_every_example_exactly_once_per_epoch(order: str, layout: str) -> None:
    plan = BatchPlan(_examples(LENGTHS), 4, seed=9, order=order, layout=layout)  # type: ignore[arg-type]
    assert plan.per_epoch == 26  # 25 full micro-batches and one of 3
    for epoch in range(3):
        seen = [i for b in range(plan.per_epoch) for i in _ids(plan, epoch * plan.per_epoch + b)]
        assert sorted(seen) == list(range(103))


@pytest.mark.parametrize("order", ["random", "grouped"])
def test_the_order_is_a_function_of_the_seed(order: str) -> None:
    def arrangement(seed: int) -> list[list[int]]:
        plan = BatchPlan(_examples(LENGTHS), 4, seed=seed, order=order)  # type: ignore[arg-type]
        return [_ids(plan, i) for i in range(2 * plan.per_epoch)]

    assert arrangement(1) == arrangement(1)
    assert arrangement(1) != arrangement(2)
    first = arrangement(1)
    assert first[:26] != first[26:]  # each epoch is shuffled anew


@pytest.mark.parametrize("order", ["random", "grouped"])
def test_a_plan_rebuilt_mid_epoch_continues_the_same_order(order: str) -> None:
    """A resumed run builds a new plan and reads on from its data position."""
    whole = BatchPlan(_examples(LENGTHS), 4, seed=3, order=order)  # type: ignore[arg-type]
    expected = [_ids(whole, i) for i in range(60)]
    resumed = BatchPlan(_examples(LENGTHS), 4, seed=3, order=order)  # type: ignore[arg-type]
    assert [_ids(resumed, i) for i in range(37, 60)] == expected[37:]


def test_grouping_cuts_padding_and_puts_the_longest_first() -> None:
    random_plan = BatchPlan(_examples(LENGTHS), 4, seed=0)
    grouped = BatchPlan(_examples(LENGTHS), 4, seed=0, order="grouped")
    packed = BatchPlan(_examples(LENGTHS), 4, seed=0, layout="packed")
    assert random_plan.padding_share(0) > 0.25
    assert grouped.padding_share(0) < 0.05
    assert packed.padding_share(0) == 0.0
    for epoch in range(3):
        first = grouped.micro_batch(epoch * grouped.per_epoch)
        assert max(len(e.input_ids) for e in first) == max(LENGTHS)
    assert grouped.longest_micro_batch() == 4 * max(LENGTHS)
    assert packed.longest_micro_batch() == sum(sorted(LENGTHS)[-4:])


def test_collate_pads_and_pack_restarts_positions() -> None:
    examples = _examples([3, 5])
    padded = collate(examples, pad_id=0)
    assert padded.input_ids.tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
    assert padded.attention_mask is not None
    assert padded.attention_mask.sum() == 8 == padded.real_tokens
    assert padded.computed_tokens == 10
    packed = pack(examples)
    assert packed.input_ids.tolist() == [[1, 2, 3, 1, 2, 3, 4, 5]]
    assert packed.position_ids is not None
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    assert packed.attention_mask is None
    # The first token of the second example is never predicted from the end of the first.
    assert packed.labels[0, 3] == IGNORE
    assert packed.trained_tokens == padded.trained_tokens == 2 + 4
    assert packed.computed_tokens == packed.real_tokens == 8


def test_longest_micro_batch_from_lengths() -> None:
    assert longest_micro_batch([10, 50, 30, 20], 2, packed=False) == 100
    assert longest_micro_batch([10, 50, 30, 20], 2, packed=True) == 80
    assert longest_micro_batch([10], 4, packed=False) == 40
    assert longest_micro_batch([], 4, packed=True) == 0


@pytest.mark.parametrize("world", [2, 3])
def test_processes_share_each_grouped_micro_batch_disjointly_and_resumably(world: int) -> None:
    """Several processes: the plan's micro-batch is the global one (micro_batch_size x world),
    each process lays out its contiguous share: disjoint, every example once per epoch, a
    rebuilt plan reads on the same shares, and the shares keep grouping's low padding."""
    from appliance.training.distributed import Group
    from appliance.training.parallel import every_share, share_batches

    examples = _examples(LENGTHS[:102])  # every process has a share of every micro-batch
    size = 2

    def shares(plan: BatchPlan, rank: int, start: int, stop: int) -> list[list[int]]:
        position = {id(e): i for i, e in enumerate(examples)}
        batches = [plan.micro_batch(m) for m in range(start, stop)]
        pieces = share_batches(batches, Group(rank=rank, world_size=world), size)
        return [[position[id(e)] for e in piece] for piece in pieces]

    plan = BatchPlan(examples, size * world, seed=5, order="grouped")
    epoch = [shares(plan, rank, 0, plan.per_epoch) for rank in range(world)]
    seen = [i for pieces in epoch for piece in pieces for i in piece]
    assert sorted(seen) == list(range(102))
    # One piece per process of every global micro-batch (the last, of 102 % 4, one each).
    assert all(len(pieces) == plan.per_epoch for pieces in epoch)
    assert all(0 < len(piece) <= size for pieces in epoch for piece in pieces)
    rebuilt = BatchPlan(examples, size * world, seed=5, order="grouped")
    for rank in range(world):
        assert shares(rebuilt, rank, 7, 12) == epoch[rank][7:12]
    split = every_share(world, size)
    assert plan.padding_share(0, split) < 0.05
    computed = sum(len(p) * max(LENGTHS[i] for i in p) for pieces in epoch for p in pieces)
    expected = 1.0 - sum(LENGTHS[:102]) / computed
    assert plan.padding_share(0, split) == pytest.approx(expected)

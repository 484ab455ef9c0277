"""The CPU's frozen projections: bitsandbytes' numbers from a reused buffer, and their outputs
recorded in a checkpointed forward and handed back to its recompute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from appliance.training import frozen_matmul
from appliance.training.frozen_matmul import (
    KeptOutputs,
    dequantised,
    frozen_forward,
    supports,
    use_frozen_matmuls,
)
from appliance.training.model import attach_lora, load_base
from appliance.training.settings import build_config

bnb = pytest.importorskip("bitsandbytes")


def _layer_4bit(
    out_features: int, in_features: int, dtype: torch.dtype, *, nested: bool, bias: bool = False
) -> Any:
    """A quantised bitsandbytes 4-bit layer with random weights (seeded)."""
    generator = torch.Generator().manual_seed(out_features + in_features)
    weight = torch.randn(out_features, in_features, generator=generator).to(dtype)
    layer = bnb.nn.Linear4bit(
        in_features, out_features, bias=bias, compute_dtype=dtype,
        compress_statistics=nested, quant_type="nf4",
    )  # fmt: skip
    layer.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, compress_statistics=nested, quant_type="nf4"
    )._quantize("cpu")
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(out_features, dtype=dtype), False)
    return layer


def _input_and_grad(layer: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, layer.in_features, generator=generator).to(dtype).requires_grad_()
    grad = torch.randn(3, 7, layer.out_features, generator=generator).to(dtype)
    return x, grad


def _output_and_input_grad(
    forward: Any, x: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    x.grad = None
    out = forward(x)
    out.backward(grad)
    assert x.grad is not None
    return out.detach(), x.grad.clone()


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_4bit_projection_gives_bitsandbytes_numbers(
    dtype: torch.dtype, nested: bool, bias: bool
) -> None:
    layer = _layer_4bit(96, 64, dtype, nested=nested, bias=bias)
    assert supports(layer)
    x, grad = _input_and_grad(layer, dtype)
    stock = _output_and_input_grad(layer, x, grad)
    own = _output_and_input_grad(lambda v: frozen_forward(layer, v), x, grad)
    assert torch.equal(own[0], stock[0])
    assert torch.equal(own[1], stock[1])
    assert own[0].dtype == dtype


def test_a_frozen_16bit_projection_gives_torch_numbers() -> None:
    layer = torch.nn.Linear(64, 96).requires_grad_(False)
    x, grad = _input_and_grad(layer, torch.float32)
    stock = _output_and_input_grad(layer, x, grad)
    own = _output_and_input_grad(lambda v: frozen_forward(layer, v), x, grad)
    torch.testing.assert_close(own[0], stock[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(own[1], stock[1], rtol=0, atol=1e-6)


def test_weights_are_dequantised_into_one_reused_buffer() -> None:
    large = _layer_4bit(96, 64, torch.float32, nested=True)
    small = _layer_4bit(32, 64, torch.float32, nested=True)
    first = dequantised(large.weight, large.weight.quant_state, torch.float32)
    pointer = first.data_ptr()
    expected = bnb.functional.dequantize_4bit(small.weight, small.weight.quant_state)
    second = dequantised(small.weight, small.weight.quant_state, torch.float32)
    assert second.data_ptr() == pointer  # the same memory, not a fresh buffer
    assert torch.equal(second, expected)


def test_what_the_kernel_cannot_take_goes_to_the_stock_forward() -> None:
    layer = _layer_4bit(96, 64, torch.float32, nested=False, bias=True)
    layer.bias.requires_grad_(True)  # a trainable bias needs bitsandbytes' own gradient
    x, _ = _input_and_grad(layer, torch.float32)
    assert type(frozen_forward(layer, x).grad_fn).__name__ == "MatMul4BitBackward"
    layer.bias.requires_grad_(False)
    assert type(frozen_forward(layer, x).grad_fn).__name__ == "_Frozen4bitBackward"
    # bf16 input to an fp32 layer: bitsandbytes casts; so does its own forward here.
    assert frozen_forward(layer, x.to(torch.bfloat16)).dtype == torch.bfloat16
    # A 16/32-bit weight that trains (unfrozen later) needs torch's own weight gradient.
    plain = torch.nn.Linear(64, 96).requires_grad_(False)
    assert type(frozen_forward(plain, x).grad_fn).__name__ == "_Frozen16Backward"
    plain.weight.requires_grad_(True)
    assert type(frozen_forward(plain, x).grad_fn).__name__ != "_Frozen16Backward"
    # Blocks bitsandbytes' CPU kernel does not take (2,048 and more: its generic path).
    large_blocks = _layer_4bit(96, 64, torch.float32, nested=False)
    large_blocks.weight.quant_state.blocksize = 2048
    assert not supports(large_blocks)


class _Two(torch.nn.Module):
    """Two frozen 4-bit projections and a SiLU between, checkpointed as one region."""

    def __init__(self) -> None:
        super().__init__()
        self.up = _layer_4bit(96, 64, torch.float32, nested=True)
        self.down = _layer_4bit(64, 96, torch.float32, nested=True)
        for layer in (self.up, self.down):
            layer.forward = frozen_forward.__get__(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.up(x)))


def _checkpointed(model: _Two, x: torch.Tensor, kept: list[KeptOutputs]) -> torch.Tensor:
    def contexts() -> Any:
        forward, recompute = frozen_matmul.context_fn()
        kept.append(forward.kept)
        return forward, recompute

    return checkpoint(model, x, use_reentrant=False, context_fn=contexts)


def test_a_checkpointed_region_hands_its_recorded_outputs_to_the_recompute() -> None:
    model = _Two()
    x, _ = _input_and_grad(model.up, torch.float32)
    grad = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(2))
    plain = _output_and_input_grad(model, x, grad)
    kept: list[KeptOutputs] = []
    replayed = _output_and_input_grad(lambda v: _checkpointed(model, v, kept), x, grad)
    assert torch.equal(replayed[0], plain[0])
    assert torch.equal(replayed[1], plain[1])
    (store,) = kept
    assert [r.layer for r in store.records] == [model.up, model.down]
    assert store.position == 1  # the recompute took up's output and stopped before down
    assert store.missed == 0
    assert store.records[0].output is None  # handed over: the store no longer holds it


def test_an_output_changed_in_place_is_computed_again() -> None:
    model = _Two()
    original_silu = torch.nn.functional.silu

    def silu_in_place(t: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        del inplace
        return original_silu(t.mul_(1.0))  # bumps up's output's version, same values

    x, _ = _input_and_grad(model.up, torch.float32)
    grad = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(2))
    plain = _output_and_input_grad(model, x, grad)
    kept: list[KeptOutputs] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "silu", silu_in_place)
        replayed = _output_and_input_grad(lambda v: _checkpointed(model, v, kept), x, grad)
    assert kept[0].missed == 1  # not handed back: computed again
    assert torch.equal(replayed[0], plain[0])
    assert torch.equal(replayed[1], plain[1])


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_every_frozen_projection_of_the_decoder_gets_the_own_forward(
    tiny_llama: Path, method: str
) -> None:
    config = build_config("quick-test", [f"method={method}", "rank=4"])
    model = attach_lora(load_base(tiny_llama, config, cuda=False, dtype=torch.float32), config)
    assert use_frozen_matmuls(model) == 7 * 2  # seven projections in each of two layers
    lm_head = model.get_output_embeddings()
    assert "forward" not in vars(lm_head)  # outside the checkpointed layers: left alone
    adapters = ("lora_A.default", "lora_B.default")
    trainable = [m for n, m in model.named_modules() if n.endswith(adapters)]
    assert trainable
    assert all("forward" not in vars(m) for m in trainable)

"""DDP and FSDP through torchrun on CUDA: the appliance's multi-process path, and its scaling.

Run by ``bench/gpu_check.py`` after its sweep whenever a GPU is present, or alone::

    python bench/gpu_parallel.py                       # QLoRA, Llama-3.2-1B shape, random weights
    python bench/gpu_parallel.py --method lora --model smollm2-1.7b --steps 8

Each check is a real run of the appliance (``runs.launch``: torchrun's agent, keys down stdin,
one event stream, rank 0's checkpoints and adapter), on a random-initialised model of a real
shape and generated conversations:

* ``ddp-1``: DDP through torchrun with one process on GPU 0 (proves the path on CUDA/NCCL);
* ``fsdp-1``: ``parallel=fsdp`` on GPU 0 (the 4-bit weights stored in bf16 and sharded);
* ``fsdp-stop-ddp-resume``: an FSDP run stopped half-way (rank 0 checkpoints the gathered LoRA
  and optimizer state) and resumed under DDP: the adapter must match ``ddp-1``'s;
* ``ddp-N`` when N > 1 GPUs: the same micro-batch per GPU on all of them; the scaling efficiency
  is tokens/s of N GPUs over N x tokens/s of one (aim: 85% or more on 2 GPUs for an 8B QLoRA).

Prints a table and returns the results (``summary.json`` of gpu_check keeps them under
``parallel``). Adapters are compared by their largest difference against their largest value;
in bf16, a few 1e-3 is rounding.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import offline  # noqa: E402

offline.enforce()

from bench.parallel_runs import (  # noqa: E402
    adapter_tensors,
    chat_rows,
    make_workspace,
    max_difference,
    measure_run,
)


def _config(method: str, steps: int, parallel: str, save_every: int) -> Any:
    from appliance.training.settings import build_config

    return build_config(
        "balanced",
        [
            f"method={method}",
            f"max_steps={steps}",
            "micro_batch_size=2",
            "gradient_accumulation_steps=2",
            "max_seq_length=512",
            "dropout=0",
            "warmup_ratio=0",
            "eval_every=0",
            f"save_every={save_every}",
            f"parallel={parallel}",
            "lr=1e-4",
        ],
    )


def _topology(gpus: list[int], names: list[str], parallel: str) -> Any:
    from appliance.training.placement import Topology

    return Topology(
        nproc_per_node=len(gpus),
        nnodes=1,
        node_rank=0,
        device="cuda",
        backend="nccl",
        gpu_indices=tuple(gpus),
        device_names=tuple(names),
        parallel=parallel,
        torchrun=True,
    )


def check(model_dir: Path, method: str, steps: int) -> dict[str, Any]:
    """Run the checks on this machine's GPUs with the model folder ``model_dir``."""
    import torch

    from appliance.registry import Registry
    from appliance.training import events as ev
    from appliance.training import runs

    count = torch.cuda.device_count()
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    results: dict[str, Any] = {"gpus": names, "method": method, "checks": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-parallel-") as tmp:
        vault = make_workspace(Path(tmp), model_dir, chat_rows(16 * max(1, count) * steps))
        checks = results["checks"]

        def record(name: str, measured: Any) -> None:
            checks[name] = {k: v for k, v in measured.__dict__.items() if k != "losses"}
            checks[name]["first_loss"] = measured.losses[0] if measured.losses else None
            checks[name]["last_loss"] = measured.losses[-1] if measured.losses else None
            peaks = ", ".join(f"{p / 2**30:.2f}" for p in measured.peak_memory)
            print(
                f"{name:>22}: {measured.state:<9} {measured.tokens_per_s:>9,.0f} tokens/s  "
                f"wall {measured.wall_s:6.1f} s  peak GiB [{peaks}]"
                + (f"  ({measured.message})" if measured.message else ""),
                flush=True,
            )

        ddp = measure_run(
            vault, _config(method, steps, "ddp", 0), _topology([0], names[:1], "ddp"), "ddp1"
        )
        record("ddp-1", ddp)
        fsdp = measure_run(
            vault, _config(method, steps, "fsdp", 0), _topology([0], names[:1], "fsdp"), "fsdp1"
        )
        record("fsdp-1", fsdp)
        if ddp.adapter and fsdp.adapter:
            checks["fsdp-1"]["max_adapter_diff_vs_ddp"] = _relative(
                vault, ddp.adapter, fsdp.adapter
            )

        # FSDP stopped half-way, resumed under DDP: the checkpoint is the same format.
        config = _config(method, steps, "fsdp", max(1, steps // 2))
        t0 = time.perf_counter()
        with Registry.open(vault.ws, audit_key=vault.audit_key) as reg:
            run_id = runs.create_run(
                vault, reg, model="m", dataset="d", adapter_name="resumed", config=config
            )
            process = runs.launch(vault, reg, run_id, topology=_topology([0], names[:1], "fsdp"))
            for event in process.events():
                if isinstance(event, ev.Step) and event.step == steps // 2:
                    process.stop()
            stopped = runs.wait_settled(process, vault, reg)
            resumed = runs.launch(vault, reg, run_id, topology=_topology([0], names[:1], "ddp"))
            list(resumed.events())
            outcome = runs.wait_settled(resumed, vault, reg)
        entry: dict[str, Any] = {
            "stopped": stopped.state,
            "state": outcome.state,
            "message": outcome.message,
            "wall_s": time.perf_counter() - t0,
        }
        if outcome.adapter and ddp.adapter:
            entry["max_adapter_diff_vs_ddp"] = _relative(vault, ddp.adapter, outcome.adapter)
        checks["fsdp-stop-ddp-resume"] = entry
        print(f"{'fsdp-stop-ddp-resume':>22}: {json.dumps(entry)}", flush=True)

        if count > 1:
            wide = measure_run(
                vault,
                _config(method, steps, "ddp", 0),
                _topology(list(range(count)), names, "ddp"),
                f"ddp{count}",
            )
            record(f"ddp-{count}", wide)
            if ddp.tokens_per_s:
                efficiency = wide.tokens_per_s / (count * ddp.tokens_per_s)
                checks[f"ddp-{count}"]["scaling_efficiency"] = efficiency
                print(f"scaling efficiency on {count} GPUs: {efficiency:.0%}", flush=True)
    return results


def _relative(vault: Any, a: str, b: str) -> float:
    """Largest difference of two adapters over their largest value."""
    first, second = adapter_tensors(vault, a), adapter_tensors(vault, b)
    scale = max(float(t.abs().max()) for t in first.values()) or 1.0
    return max_difference(first, second) / scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-3.2-1b")
    parser.add_argument("--method", choices=["qlora", "lora"], default="qlora")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_check"))
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_parallel: no CUDA GPU here; nothing measured.", file=sys.stderr)
        return 0
    from bench.gpu_check import SHAPES, build_model_folder

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-parallel-model-") as tmp:
        folder = Path(tmp) / args.model
        build_model_folder(SHAPES[args.model], folder, "cuda")
        _tokenizer(folder)
        results = check(folder, args.method, args.steps)
    (args.out / "parallel.json").write_text(json.dumps(results, indent=2) + "\n")
    failed = [name for name, r in results["checks"].items() if r.get("state") != "finished"]
    print(f"results: {args.out / 'parallel.json'}" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


def _tokenizer(folder: Path) -> None:
    """A small local tokenizer with a chat template beside the random weights (vocabulary ids
    below the model's; no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(2000, vocab),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(f"w{i}" for i in range(500)), "Question Answer"] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(folder)


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


if __name__ == "__main__":
    raise SystemExit(main())

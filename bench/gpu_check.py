"""QLoRA on CUDA on a random-initialised model of a real shape: memory and speed vs the estimate.

Run on a machine with an NVIDIA GPU::

    .venv/bin/python bench/gpu_check.py                    # Llama-3.2-1B shape, a small sweep
    .venv/bin/python bench/gpu_check.py --model llama-3-8b --sweep b1s2048
    .venv/bin/python bench/gpu_check.py --cpu-smoke        # the same code path on CPU, tiny shape
    .venv/bin/python bench/gpu_check.py --no-parallel      # skip the DDP/FSDP checks

After the sweep, on CUDA, the multi-process checks of ``bench/gpu_parallel.py`` run on the same
random model: DDP and FSDP through torchrun on one GPU, an FSDP run resumed under DDP, and the
1 vs N GPUs scaling when there are several; ``summary.json`` keeps them under ``parallel``.

For each setting of the sweep it trains a few QLoRA steps on random tokens, emits the appliance's
events (``step`` and ``memory`` each step: NVML used/total, torch allocated/reserved/peak) to
``OUT/metrics.jsonl``, and prints the pre-flight estimate against the measured peaks: torch's
``max_memory_allocated`` against the estimate without the CUDA context, NVML's highest
``used`` against the full estimate. ``OUT/summary.json`` keeps the table. Weights are random:
memory and speed do not depend on them. Without CUDA it says so and exits 0.
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

from appliance.gpu import NvmlSession, format_bytes  # noqa: E402
from appliance.training import events as ev  # noqa: E402
from appliance.training.config import TrainConfig  # noqa: E402
from appliance.training.estimate import estimate_memory, render_estimate  # noqa: E402
from appliance.training.memory import read_memory  # noqa: E402
from appliance.training.settings import build_config  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    # Published config.json values of the real models (shapes only; weights are random here).
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 130000.0,
        "max_position_embeddings": 8192,
    },
    "llama-3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "tie_word_embeddings": False,
        "max_position_embeddings": 512,
    },
}

SWEEPS = {
    # name: (micro-batch, sequence length, gradient checkpointing)
    "b1s512": (1, 512, True),
    "b1s2048": (1, 2048, True),
    "b4s1024": (4, 1024, True),
    "b1s1024-nockpt": (1, 1024, False),
    "b2s2048-nockpt": (2, 2048, False),
}
DEFAULT_SWEEP = ["b1s512", "b1s2048", "b4s1024", "b1s1024-nockpt"]


def build_model_folder(shape: dict[str, Any], folder: Path, device: str) -> None:
    """Write a random-initialised LLaMA of ``shape`` as a safetensors folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # Initialising on the GPU is seconds instead of minutes for billions of parameters.
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def train_setting(
    model: Any,
    run_id: str,
    config: TrainConfig,
    steps: int,
    vocab: int,
    device: str,
    log: ev.EventLog,
    nvml: NvmlSession,
) -> dict[str, Any]:
    """A few optimizer steps on random tokens; returns measured peaks and speed."""
    import torch

    b, s = config.schedule.micro_batch_size, config.data.max_seq_length
    accum = config.schedule.gradient_accumulation_steps
    base = model.get_base_model()
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
    if config.gradient_checkpointing:
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
    else:
        disable = getattr(base, "activation_checkpointing_disable", None)
        (disable or base.gradient_checkpointing_disable)()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optim.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    nvml_peak = 0
    started = time.perf_counter()
    tokens = 0
    model.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        total_loss = 0.0
        for _ in range(accum):
            ids = torch.randint(3, vocab, (b, s), generator=generator).to(device)
            loss = model(input_ids=ids, labels=ids).loss / accum
            loss.backward()
            total_loss += loss.item()
            tokens += b * s
        torch.nn.utils.clip_grad_norm_(params, config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        log.emit(
            ev.Step(
                run_id=run_id,
                step=step,
                total_steps=steps,
                epoch=step / steps,
                loss=total_loss,
                lr=config.optim.learning_rate,
                tokens_per_s=b * s * accum / elapsed,
                eta_s=elapsed * (steps - step),
                tokens_seen=tokens,
            )
        )
        memory = read_memory(run_id, nvml=nvml, devices=[0] if device == "cuda" else [], step=step)
        log.emit(memory)
        for gpu in memory.gpus:
            nvml_peak = max(nvml_peak, gpu.used or 0)
    # An evaluation pass, as the worker makes: on CUDA it must change nothing for training.
    model.eval()
    with torch.no_grad():
        ids = torch.randint(3, vocab, (b, s), generator=generator).to(device)
        eval_loss = model(input_ids=ids, labels=ids).loss.item()
    log.emit(ev.Eval(run_id=run_id, step=steps, eval_loss=eval_loss))
    wall = time.perf_counter() - started
    torch_peak = int(torch.cuda.max_memory_allocated()) if device == "cuda" else None
    reserved_peak = int(torch.cuda.max_memory_reserved()) if device == "cuda" else None
    log.emit(
        ev.Finished(
            run_id=run_id,
            step=steps,
            train_loss=total_loss,
            eval_loss=eval_loss,
            tokens_seen=tokens,
            wall_s=wall,
            peak_memory=torch_peak,
        )
    )
    del optimizer
    return {
        "torch_peak": torch_peak,
        "reserved_peak": reserved_peak,
        "nvml_peak": nvml_peak or None,
        "tokens_per_s": tokens / wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--sweep", nargs="+", choices=sorted(SWEEPS), default=DEFAULT_SWEEP)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--target-modules", default="all-linear")
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_check"))
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run the same code on CPU with the tiny shape"
    )
    parser.add_argument(
        "--no-parallel", action="store_true", help="skip the DDP/FSDP checks through torchrun"
    )
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.cpu_smoke:
        device, args.model = "cpu", "tiny"
        args.sweep = ["b1s512"]
        torch.set_num_threads(1)
    elif device != "cuda":
        print(
            "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing measured. "
            "Run it where there is an NVIDIA GPU and a CUDA build of torch, or pass --cpu-smoke.",
            file=sys.stderr,
        )
        return 0

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from appliance.training.quant import check_not_repacked, load_4bit

    shape = SHAPES[args.model]
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = args.out / ev.METRICS_FILE
    metrics.unlink(missing_ok=True)
    results = []
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, NvmlSession() as nvml:
        folder = Path(tmp) / args.model
        t0 = time.perf_counter()
        build_model_folder(shape, folder, device)
        print(f"random {args.model} written in {time.perf_counter() - t0:.1f} s", flush=True)
        base_config = build_config(
            "balanced",
            [
                f"rank={args.rank}",
                f"alpha={2 * args.rank}",
                f"target_modules={args.target_modules}",
            ],
        )
        dtype_name = base_config.resolve_compute_dtype(cuda=device == "cuda", bf16_supported=bf16)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
        model = load_4bit(folder, dtype, device_map={"": 0} if device == "cuda" else "cpu")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lora = base_config.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.rank,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
        model.enable_input_require_grads()
        # peft counts a packed 4-bit parameter as the two values it holds.
        trainable, all_params = model.get_nb_trainable_parameters()
        with ev.EventLog(metrics, None) as log:
            for name in args.sweep:
                b, s, ckpt = SWEEPS[name]
                config = build_config(
                    "balanced",
                    [
                        f"rank={args.rank}",
                        f"alpha={2 * args.rank}",
                        f"target_modules={args.target_modules}",
                        f"micro_batch_size={b}",
                        "gradient_accumulation_steps=1",
                        f"max_seq_length={s}",
                        f"gradient_checkpointing={ckpt}",
                        f"compute_dtype={dtype_name}",
                    ],
                )
                estimate = estimate_memory(shape, config, device=device, bf16_supported=bf16)
                run_id = f"gpu-check-{args.model}-{name}"
                log.emit(
                    ev.Started(
                        run_id=run_id,
                        model=f"random {args.model}",
                        dataset="random tokens",
                        device=f"{device}:0" if device == "cuda" else "cpu",
                        trainable_params=trainable,
                        total_params=all_params,
                        total_steps=args.steps,
                        estimate=estimate.to_dict(),
                    )
                )
                try:
                    measured = train_setting(
                        model, run_id, config, args.steps, shape["vocab_size"], device, log, nvml
                    )
                except torch.cuda.OutOfMemoryError as exc:
                    log.emit(ev.Failed(run_id=run_id, message=str(exc)[:300], kind="oom"))
                    measured = {"oom": True}
                    torch.cuda.empty_cache()
                check_not_repacked(model)
                print(f"\n== {args.model} {name} (b={b}, s={s}, checkpointing={ckpt})")
                print("\n".join(render_estimate(estimate)))
                _print_comparison(estimate.allocated_bytes, estimate.total_bytes, measured)
                results.append(
                    {
                        "setting": name,
                        "estimate_allocated": estimate.allocated_bytes,
                        "estimate_total": estimate.total_bytes,
                        "estimated_trainable": estimate.trainable_params,
                        "trainable": trainable,
                        **measured,
                    }
                )
        parallel = None
        if device == "cuda" and not args.no_parallel:
            from bench.gpu_parallel import _tokenizer, check

            del model  # the checks train in child processes, which need the GPU's memory
            torch.cuda.empty_cache()
            _tokenizer(folder)
            print("\n== DDP / FSDP through torchrun", flush=True)
            parallel = check(folder, "qlora", 2 * args.steps)
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    summary = {
        "model": args.model,
        "device": device_name,
        "torch": torch.__version__,
        "dtype": dtype_name,
        "results": results,
        "parallel": parallel,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nevents: {metrics}\nsummary: {args.out / 'summary.json'}")
    return 0


def _print_comparison(est_alloc: int, est_total: int, measured: dict[str, Any]) -> None:
    if measured.get("oom"):
        print("  measured: CUDA out of memory")
        return
    torch_peak, nvml_peak = measured.get("torch_peak"), measured.get("nvml_peak")
    if torch_peak:
        ratio = est_alloc / torch_peak
        print(
            f"  torch peak allocated {format_bytes(torch_peak)} vs estimate "
            f"{format_bytes(est_alloc)}: estimate/measured = {ratio:.2f}"
        )
    if nvml_peak:
        print(
            f"  NVML peak used {format_bytes(nvml_peak)} vs estimate with context "
            f"{format_bytes(est_total)}: estimate/measured = {est_total / nvml_peak:.2f}"
        )
    print(f"  throughput {measured['tokens_per_s']:,.0f} tokens/s")


if __name__ == "__main__":
    raise SystemExit(main())

"""QLoRA on CUDA, the appliance's training path against the bare loop, on random-weight models of
real shapes: throughput, MFU, memory, and the pre-flight estimate against torch's and NVML's peaks.

Run on a machine with an NVIDIA GPU (torch, transformers, peft, bitsandbytes; no demo model and
no network needed: weights and token ids are made here)::

    python bench/gpu_check.py                        # Llama-3.2-1B shape, the default sweep
    python bench/gpu_check.py --model llama-3-8b --sweep b1s2048
    python bench/gpu_check.py --cpu-smoke            # the same code on CPU, tiny shape (CI)
    python bench/gpu_check.py --no-parallel          # skip the DDP/FSDP checks

For each setting of the sweep it makes chat-like examples of mixed lengths (uniform between an
eighth of the setting's sequence length and all of it, the last 40% of each labelled, as an
assistant reply is) and trains a few optimizer steps twice, in this order:

* ``appliance``: :func:`appliance.training.model.load_for_training` (bf16 compute, SDPA, frozen
  weights kept 16-bit, LoRA/AdamW fp32), its batch plan (length-grouped), the chunked loss from
  hidden states of labelled positions, the step of :mod:`appliance.training.steps`;
* ``bare``: ``bench/bare.py``, the loop a practitioner writes (``prepare_model_for_kbit_training``,
  random order padded to the longest, the model's own loss over whole logits);

and prints, for each: real (non-padding) tokens/s, step time, torch's peak allocation, NVML's
peak "used", and model FLOPs utilisation: useful FLOPs (real tokens x (4 x N) without gradient
checkpointing, 6 x N with it, N = parameters of the linear layers and the LM head; a frozen base
needs no weight gradients, checkpointing adds one forward) over the GPU's dense bf16 peak
(989 TFLOP/s for H100 and H200 SXM, from NVIDIA's datasheets; ``--peak-tflops`` for others).
The estimate made with the examples' lengths is checked against the appliance's peaks: torch's
peak against the estimate without the CUDA context, NVML's against the whole estimate.
The appliance's events go to ``OUT/metrics.jsonl``; ``OUT/summary.json`` keeps every figure.
After the sweep, on CUDA, the multi-process checks of ``bench/gpu_parallel.py`` run on the same
random model: DDP and FSDP through torchrun on one GPU, an FSDP run resumed under DDP, and the
1 vs N GPUs scaling when there are several; ``summary.json`` keeps them under ``parallel``.
Without CUDA (and without ``--cpu-smoke``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import offline  # noqa: E402

offline.enforce()

from appliance.gpu import NvmlReader, format_bytes  # noqa: E402
from appliance.training import events as ev  # noqa: E402
from appliance.training.config import TrainConfig  # noqa: E402
from appliance.training.estimate import ModelShape, estimate_memory, render_estimate  # noqa: E402
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
    # name: (micro-batch, longest sequence, gradient checkpointing)
    "b1s512": (1, 512, True),
    "b8s512": (8, 512, True),
    "b1s2048": (1, 2048, True),
    "b4s1024": (4, 1024, True),
    "b1s1024-nockpt": (1, 1024, False),
    "b4s1024-nockpt": (4, 1024, False),
    "b2s2048-nockpt": (2, 2048, False),
}
DEFAULT_SWEEP = ["b8s512", "b4s1024", "b4s1024-nockpt"]

PEAK_BF16_TFLOPS = {
    # Dense bf16 tensor-core peaks from NVIDIA's datasheets (SXM where there are two forms).
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}


def peak_tflops(device_name: str, override: float | None) -> float | None:
    """The GPU's dense bf16 peak in TFLOP/s: ``override``, else from its name, else None."""
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def model_flops_per_token(shape: dict[str, Any], checkpointing: bool) -> float:
    """Useful training FLOPs per token of LoRA on a frozen base: 4 x N, 6 x N with checkpointing.

    N counts the linear layers and the LM head (what the matmuls touch); attention scores and
    the adapters are left out, so the figure is a slight underestimate of the work done.
    """
    dims = ModelShape.from_config(shape)
    n = dims.linear_params + dims.vocab * dims.hidden
    return (6.0 if checkpointing else 4.0) * n


def build_model_folder(shape: dict[str, Any], folder: Path, device: str) -> None:
    """Write a random-initialised LLaMA of ``shape`` as a safetensors folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # Initialising on the GPU is seconds instead of minutes for billions of parameters.
    with torch.device(device):
        # transformers types PreTrainedModel.to as a functools.wraps of Module.to, which mypy
        # reads as an unbound method wanting the model as its first argument.
        model = LlamaForCausalLM(config).to(dtype)  # type: ignore[arg-type]
    model.save_pretrained(folder, safe_serialization=True)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def make_examples(count: int, longest: int, vocab: int, seed: int) -> list[dict[str, list[int]]]:
    """Chat-like examples: lengths uniform in [longest/8, longest], last 40% labelled."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    low = max(4, longest // 8)
    examples = []
    for _ in range(count):
        n = int(torch.randint(low, longest + 1, (1,), generator=generator))
        ids = torch.randint(3, vocab, (n,), generator=generator).tolist()
        cut = n - max(1, (4 * n) // 10)
        examples.append({"input_ids": ids, "labels": [-100] * cut + ids[cut:]})
    return examples


class Peaks:
    """Torch's and NVML's peaks from a point on, NVML sampled after every step."""

    def __init__(self, device: str, nvml: NvmlReader) -> None:
        self.device, self.nvml, self.nvml_peak = device, nvml, 0
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def sample(self, run_id: str, step: int, log: ev.EventLog | None) -> None:
        memory = read_memory(
            run_id, nvml=self.nvml, devices=[0] if self.device == "cuda" else [], step=step
        )
        if log is not None:
            log.emit(memory)
        for gpu in memory.gpus:
            self.nvml_peak = max(self.nvml_peak, gpu.used or 0)

    def torch_peak(self) -> int | None:
        if self.device != "cuda":
            return None
        import torch

        return int(torch.cuda.max_memory_allocated())


def release(device: str) -> None:
    """Free what a variant left, so the next one's peaks are its own."""
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_appliance(
    folder: Path,
    config: TrainConfig,
    examples: list[dict[str, list[int]]],
    steps: int,
    device: str,
    dtype: Any,
    run_id: str,
    log: ev.EventLog,
    nvml: NvmlReader,
    started_event: Callable[[Any], ev.Started],
) -> dict[str, Any]:
    """The appliance's training path on ``examples``; emits its events to ``log``."""
    import torch

    from appliance.training.batching import BatchPlan, Example
    from appliance.training.loss import causal_lm_loss
    from appliance.training.model import MODES, load_for_training
    from appliance.training.quant import check_not_repacked
    from appliance.training.steps import train_step

    cuda = device == "cuda"
    peaks = Peaks(device, nvml)
    t_load = time.perf_counter()
    torch.manual_seed(config.seed)
    loaded = load_for_training(folder, config, cuda=cuda, dtype=dtype)
    load_s = time.perf_counter() - t_load
    model = loaded.model
    chunked = loaded.chunked_loss
    order, layout = MODES[loaded.batching]
    data = [Example(e["input_ids"], e["labels"]) for e in examples]
    plan = BatchPlan(
        data, config.schedule.micro_batch_size, config.seed, order=order, layout=layout
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optim.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    log.emit(started_event(loaded))

    def loss_fn(m: Any, batch: Any) -> tuple[Any, int]:
        return causal_lm_loss(m, batch, chunked=chunked)

    accum = config.schedule.gradient_accumulation_steps
    times, reals, computed = [], 0, 0
    tokens_seen = 0
    for step in range(1, steps + 1):
        batches = [plan.batch((step - 1) * accum + i) for i in range(accum)]
        t0 = time.perf_counter()
        result = train_step(
            model,
            batches,
            loss_fn,
            device,
            params,
            optimizer,
            scheduler,
            config.optim.max_grad_norm,
        )
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        tokens_seen += result.real_tokens
        if step > 1:  # the first step pays for kernel selection and allocator growth
            times.append(elapsed)
            reals += result.real_tokens
            computed += result.computed_tokens
        log.emit(
            ev.Step(
                run_id=run_id,
                step=step,
                total_steps=steps,
                epoch=plan.epoch_at(step * accum),
                loss=result.loss,
                lr=config.optim.learning_rate,
                tokens_per_s=result.real_tokens / elapsed,
                eta_s=elapsed * (steps - step),
                grad_norm=result.grad_norm,
                tokens_seen=tokens_seen,
                label_tokens=result.label_tokens,
                padding_share=1 - result.real_tokens / result.computed_tokens,
            )
        )
        peaks.sample(run_id, step, log)
    # An evaluation pass, as the worker makes: on CUDA it must change nothing for training.
    model.eval()
    with torch.no_grad():
        eval_batch = plan.batch(0).to(device)
        loss_sum, count = loss_fn(model, eval_batch)
        eval_loss = float(loss_sum) / count
    model.train()
    check_not_repacked(model)
    log.emit(ev.Eval(run_id=run_id, step=steps, eval_loss=eval_loss))
    torch_peak = peaks.torch_peak()
    log.emit(
        ev.Finished(
            run_id=run_id,
            step=steps,
            train_loss=result.loss,
            eval_loss=eval_loss,
            tokens_seen=tokens_seen,
            wall_s=sum(times),
            peak_memory=torch_peak,
        )
    )
    figures = {
        "batching": loaded.batching,
        "loss_path": "chunked" if loaded.chunked_loss else "logits",
        "attention": loaded.attention,
        "load_s": load_s,
        "step_s": sum(times) / max(1, len(times)),
        "tokens_per_s": reals / sum(times) if times else 0.0,
        "padding_share": 1 - reals / computed if computed else 0.0,
        "torch_peak": torch_peak,
        "nvml_peak": peaks.nvml_peak or None,
        "final_loss": result.loss,
    }
    del model, loaded, optimizer, params
    release(device)
    return figures


def run_bare(
    folder: Path,
    config: TrainConfig,
    examples: list[dict[str, list[int]]],
    steps: int,
    device: str,
    dtype: Any,
    nvml: NvmlReader,
) -> dict[str, Any]:
    """``bench/bare.py``'s loop on the same model, examples, settings and seed."""
    import bench.bare as bare

    cuda = device == "cuda"
    peaks = Peaks(device, nvml)
    t_load = time.perf_counter()
    lora = config.lora
    model = bare.load_model(
        folder,
        method=config.method,
        dtype=dtype,
        device_map={"": 0} if cuda else "cpu",
        checkpointing=config.gradient_checkpointing,
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=lora.target_modules,
    )
    load_s = time.perf_counter() - t_load
    records: list[dict[str, Any]] = []

    def on_step(record: dict[str, Any]) -> None:
        records.append(record)
        peaks.sample("bare", record["step"], None)

    bare.train(
        model,
        bare.batches(examples, config.schedule.micro_batch_size, config.seed, pad_id=0),
        steps=steps,
        accumulation=config.schedule.gradient_accumulation_steps,
        lr=config.optim.learning_rate,
        warmup=0,
        max_grad_norm=config.optim.max_grad_norm,
        device="cuda:0" if cuda else "cpu",
        on_step=on_step,
    )
    timed = records[1:] or records
    seconds = sum(r["seconds"] for r in timed)
    figures = {
        "load_s": load_s,
        "step_s": seconds / len(timed),
        "tokens_per_s": sum(r["real_tokens"] for r in timed) / seconds,
        "torch_peak": peaks.torch_peak(),
        "nvml_peak": peaks.nvml_peak or None,
        "final_loss": records[-1]["loss"],
    }
    del model
    release(device)
    return figures


def packing_report(device: str, dtype: Any) -> dict[str, Any]:
    """Which attention implementations keep packed examples apart (transformers' own check)."""
    import importlib.util

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from appliance.training.batching import packing_honoured

    result: dict[str, Any] = {}
    kinds = ["sdpa", "eager"]
    if device == "cuda":
        kinds.append("flash_attention_2")
    for kind in kinds:
        if kind.startswith("flash") and importlib.util.find_spec("flash_attn") is None:
            result[kind] = "flash-attn not installed"
            continue
        config = LlamaConfig(**SHAPES["tiny"])
        # What attn_implementation=kind sets; LlamaConfig's signature does not list the keyword.
        config._attn_implementation = kind
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
        result[kind] = packing_honoured(model, device, dtype)
        del model
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--sweep", nargs="+", choices=sorted(SWEEPS), default=DEFAULT_SWEEP)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--target-modules", default="all-linear")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare loop")
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

    shape = SHAPES[args.model]
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = args.out / ev.METRICS_FILE
    metrics.unlink(missing_ok=True)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()
    peak = peak_tflops(device_name, args.peak_tflops) if device == "cuda" else None
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, NvmlReader() as nvml:
        folder = Path(tmp) / args.model
        t0 = time.perf_counter()
        build_model_folder(shape, folder, device)
        print(f"random {args.model} written in {time.perf_counter() - t0:.1f} s", flush=True)
        common = [
            f"rank={args.rank}",
            f"alpha={2 * args.rank}",
            f"target_modules={args.target_modules}",
            f"gradient_accumulation_steps={args.accumulation}",
        ]
        dtype_name = build_config("balanced", common).resolve_compute_dtype(
            cuda=device == "cuda", bf16_supported=bf16
        )
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
        packing = packing_report(device, dtype)
        print(f"packed examples kept apart by: {packing}", flush=True)
        with ev.EventLog(metrics, None) as log:
            for name in args.sweep:
                b, s, ckpt = SWEEPS[name]
                config = build_config(
                    "balanced",
                    [
                        *common,
                        f"micro_batch_size={b}",
                        f"max_seq_length={s}",
                        f"gradient_checkpointing={ckpt}",
                        f"compute_dtype={dtype_name}",
                    ],
                )
                examples = make_examples(
                    b * args.accumulation * args.steps, s, shape["vocab_size"], seed=len(name)
                )
                lengths = [len(e["input_ids"]) for e in examples]
                estimate = estimate_memory(
                    shape, config, device=device, bf16_supported=bf16, lengths=lengths
                )
                run_id = f"gpu-check-{args.model}-{name}"

                def started(loaded: Any, run_id: str = run_id, est: Any = estimate) -> ev.Started:
                    trainable, total = loaded.model.get_nb_trainable_parameters()
                    return ev.Started(
                        run_id=run_id,
                        model=f"random {args.model}",
                        dataset="random tokens, mixed lengths",
                        device=f"{device}:0" if device == "cuda" else "cpu",
                        trainable_params=trainable,
                        total_params=total,
                        total_steps=args.steps,
                        estimate=est.to_dict(),
                        batching=loaded.batching,
                        loss_path="chunked" if loaded.chunked_loss else "logits",
                        attention=loaded.attention,
                    )

                row: dict[str, Any] = {
                    "setting": name,
                    "micro_batch": b,
                    "longest": s,
                    "checkpointing": ckpt,
                    "estimate_allocated": estimate.allocated_bytes,
                    "estimate_total": estimate.total_bytes,
                    "estimate_tokens": estimate.tokens,
                    "estimated_trainable": estimate.trainable_params,
                }
                flops = model_flops_per_token(shape, ckpt)
                for variant in ("appliance", "bare"):
                    if variant == "bare" and args.no_bare:
                        continue
                    try:
                        if variant == "appliance":
                            measured = run_appliance(
                                folder, config, examples, args.steps, device, dtype, run_id,
                                log, nvml, started,
                            )  # fmt: skip
                        else:
                            measured = run_bare(
                                folder, config, examples, args.steps, device, dtype, nvml
                            )
                    except torch.cuda.OutOfMemoryError as exc:
                        log.emit(ev.Failed(run_id=run_id, message=str(exc)[:300], kind="oom"))
                        measured = {"oom": True}
                        release(device)
                    if peak and not measured.get("oom"):
                        measured["mfu"] = measured["tokens_per_s"] * flops / (peak * 1e12)
                    row[variant] = measured
                print(f"\n== {args.model} {name} (b={b}, sequences up to {s}, "
                      f"checkpointing={ckpt}, {dtype_name})")  # fmt: skip
                print("\n".join(render_estimate(estimate)))
                _print_comparison(estimate.allocated_bytes, estimate.total_bytes, row)
                results.append(row)
        parallel = None
        if device == "cuda" and not args.no_parallel:
            from bench.gpu_parallel import _tokenizer, check

            release(device)  # the checks train in child processes, which need the GPU's memory
            _tokenizer(folder)
            print("\n== DDP / FSDP through torchrun", flush=True)
            parallel = check(folder, "qlora", 2 * args.steps)
    summary = {
        "model": args.model,
        "device": device_name,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "bitsandbytes": _version("bitsandbytes"),
        "dtype": dtype_name,
        "peak_tflops_bf16": peak,
        "flops_per_token": "4 x N without checkpointing, 6 x N with (N: linear layers + LM head)",
        "packing_honoured": packing,
        "results": results,
        "parallel": parallel,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_table(summary)
    print(f"\nevents: {metrics}\nsummary: {args.out / 'summary.json'}")
    return 0


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _print_comparison(est_alloc: int, est_total: int, row: dict[str, Any]) -> None:
    measured = row.get("appliance", {})
    if measured.get("oom"):
        print("  appliance: CUDA out of memory")
        return
    torch_peak, nvml_peak = measured.get("torch_peak"), measured.get("nvml_peak")
    if torch_peak:
        print(
            f"  torch peak allocated {format_bytes(torch_peak)} vs estimate "
            f"{format_bytes(est_alloc)}: estimate/measured = {est_alloc / torch_peak:.2f}"
        )
    if nvml_peak:
        print(
            f"  NVML peak used {format_bytes(nvml_peak)} vs estimate with context "
            f"{format_bytes(est_total)}: estimate/measured = {est_total / nvml_peak:.2f}"
        )


def _print_table(summary: dict[str, Any]) -> None:
    gib = 1024**3

    def cell(run: dict[str, Any] | None, key: str, fmt: str, scale: float = 1.0) -> str:
        if not run or run.get("oom"):
            return "OOM" if run else "-"
        value = run.get(key)
        return "-" if value is None else format(value / scale, fmt)

    print(
        f"\n{summary['model']} on {summary['device']} ({summary['dtype']}; MFU against "
        f"{summary['peak_tflops_bf16'] or '?'} TFLOP/s dense bf16)"
    )
    header = (
        f"{'setting':16}{'variant':11}{'real tok/s':>11}{'step s':>8}{'MFU':>7}"
        f"{'torch GiB':>10}{'NVML GiB':>9}{'pad':>6}{'loss':>8}"
    )
    print(header)
    for row in summary["results"]:
        for variant in ("appliance", "bare"):
            run = row.get(variant)
            if run is None:
                continue
            print(
                f"{row['setting']:16}{variant:11}{cell(run, 'tokens_per_s', ',.0f'):>11}"
                f"{cell(run, 'step_s', '.2f'):>8}{cell(run, 'mfu', '.1%'):>7}"
                f"{cell(run, 'torch_peak', '.2f', gib):>10}{cell(run, 'nvml_peak', '.2f', gib):>9}"
                f"{cell(run, 'padding_share', '.0%'):>6}{cell(run, 'final_loss', '.3f'):>8}"
            )
        a, b = row.get("appliance"), row.get("bare")
        if a and b and not a.get("oom") and not b.get("oom"):
            ratio = a["tokens_per_s"] / b["tokens_per_s"]
            mem = (a["torch_peak"] / b["torch_peak"]) if a.get("torch_peak") else None
            mem_text = f", torch peak {mem:.2f}x" if mem else ""
            print(f"{'':16}appliance / bare: throughput {ratio:.2f}x{mem_text}")
        if a and not a.get("oom") and a.get("torch_peak"):
            print(
                f"{'':16}estimate / torch peak {row['estimate_allocated'] / a['torch_peak']:.2f}"
                + (
                    f", estimate / NVML peak {row['estimate_total'] / a['nvml_peak']:.2f}"
                    if a.get("nvml_peak")
                    else ""
                )
            )


if __name__ == "__main__":
    raise SystemExit(main())

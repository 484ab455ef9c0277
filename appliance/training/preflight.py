"""Pre-flight: will this run fit? The memory estimate set against the chosen device's free memory.

The figures come from :mod:`appliance.training.estimate`; this module chooses the device (GPU
``gpu_index`` through NVML, else the CPU and its available RAM), asks for suggestions when the
run does not fit, and returns it all as one :class:`Preflight`: structured (fits, free bytes, the
breakdown, the suggested fix as ``--set`` assignments) and as the text lines ``appliance train``
prints. The desktop app's Train page shows the same lines, colours them by :attr:`Preflight.fits`
and offers :meth:`Preflight.apply_fix`. No torch, no Qt: it reads ``config.json`` and NVML.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import TrainingError
from appliance.gpu import GpuState, format_bytes, read_gpus
from appliance.registry import Registry
from appliance.training.config import TrainConfig
from appliance.training.device_estimate import per_device
from appliance.training.estimate import (
    EstimateItem,
    MemoryEstimate,
    Suggestion,
    estimate_memory,
    render_estimate,
    suggest_changes,
)
from appliance.training.memory import available_ram
from appliance.training.placement import Topology
from appliance.workspace import Workspace

CPU_NOTE = (
    "No NVIDIA GPU found: training runs on the CPU, in fp32 (slow; fine for small models "
    "such as the demo model)."
)


@dataclass(frozen=True)
class Preflight:
    """The estimate beside the free memory of the device the run would use."""

    device: str
    """``cuda`` or ``cpu``."""
    device_label: str
    """For people: ``GPU 0: NVIDIA H200`` or ``CPU (no NVIDIA GPU found)``."""
    free_bytes: int | None
    """Free memory of that GPU (NVML), or the RAM available on a CPU; None if unreadable."""
    free_label: str
    """What :attr:`free_bytes` measures: ``free GPU memory`` or ``available RAM``."""
    estimate: MemoryEstimate | None
    """None when the model's shape cannot be estimated (:attr:`note` says why)."""
    suggestions: tuple[Suggestion, ...]
    """Changes that would make it fit, gentlest first (empty when it fits)."""
    note: str | None
    """A remark above the figures: why there is no estimate, or that training runs on a CPU."""
    lines: tuple[str, ...]
    """The whole verdict as text, as ``appliance train`` prints it."""

    @property
    def fits(self) -> bool | None:
        """Whether the estimate fits in the free memory; None when either is unknown."""
        if self.estimate is None or self.free_bytes is None:
            return None
        return self.estimate.fits(self.free_bytes)

    @property
    def items(self) -> tuple[EstimateItem, ...]:
        """The breakdown (label, bytes, how it was counted), for a tooltip."""
        return self.estimate.items if self.estimate is not None else ()

    @property
    def fix(self) -> Suggestion | None:
        """The gentlest suggested change that fits, if any."""
        return next((s for s in self.suggestions if s.fits), None)

    def apply_fix(self, config: TrainConfig) -> TrainConfig:
        """``config`` with :attr:`fix` applied (unchanged when there is none).

        Raises:
            ConfigError: the changed config does not validate (not expected: fixes are checked).
        """
        from appliance.training.settings import apply_overrides

        fix = self.fix
        return apply_overrides(config, list(fix.assignments)) if fix is not None else config


def check(
    model_config: Mapping[str, Any],
    config: TrainConfig,
    *,
    gpus: GpuState,
    gpu_index: int = 0,
    ram_free: int | None = None,
    topology: Topology | None = None,
    lengths: Sequence[int] | None = None,
) -> Preflight:
    """The pre-flight verdict for ``config`` on the model of ``model_config``.

    Args:
        model_config: the model's ``config.json`` as a dict.
        config: the training settings.
        gpus: an NVML reading (:func:`appliance.gpu.read_gpus`); no GPU means the CPU.
        gpu_index: the GPU the run would use (one process).
        ram_free: available RAM for a CPU run (:func:`available_ram`).
        topology: several processes (:func:`appliance.training.placement.resolve_topology`): the
            estimate is per process (DDP or FSDP) and set against each selected GPU's free
            memory, or the processes together against the RAM.
        lengths: the training examples' token lengths; activations are then sized from the
            longest micro-batch they form rather than from ``max_seq_length``.
    """
    if topology is not None and topology.distributed:
        return _check_processes(model_config, config, gpus, ram_free, topology, lengths)
    if topology is not None:
        # One process: its GPU, or none (-1) for the CPU even where GPUs are present.
        gpu_index = topology.gpu_indices[0] if topology.gpu_indices else -1
    device, label, free, free_label, note = _device(gpus, gpu_index, ram_free)
    try:
        # The run decides speed.keep_matmuls=auto against the same free memory.
        estimate = estimate_memory(
            model_config, config, device=device, lengths=lengths, budget=free
        )
        suggestions: tuple[Suggestion, ...] = ()
        if device == "cuda" and free is not None:
            suggestions = tuple(
                suggest_changes(model_config, config, free, device=device, lengths=lengths)
            )
    except TrainingError as exc:
        reason = f"No memory estimate for this model: {exc}"
        return Preflight(device, label, free, free_label, None, (), reason, (reason,))
    figures = render_estimate(estimate, free, suggestions)
    head = [label] if device == "cuda" else [CPU_NOTE]
    return Preflight(
        device, label, free, free_label, estimate, suggestions, note, (*head, *figures)
    )


def _check_processes(
    model_config: Mapping[str, Any],
    config: TrainConfig,
    gpus: GpuState,
    ram_free: int | None,
    topology: Topology,
    lengths: Sequence[int] | None,
) -> Preflight:
    """The verdict for several processes: each GPU against the per-process figure, or the CPU
    processes together against the available RAM."""
    cuda = topology.device == "cuda"
    device = "cuda" if cuda else "cpu"
    label = topology.describe()
    try:
        single = estimate_memory(model_config, config, device=device, lengths=lengths)
        estimate = per_device(single, model_config, config, topology.world_size, topology.parallel)
    except TrainingError as exc:
        reason = f"No memory estimate for this model: {exc}"
        return Preflight(device, label, None, "free memory", None, (), reason, (reason,))
    each = estimate.total_bytes
    lines = [f"{label}: {topology.world_size} process(es) in all"]
    if cuda:
        readings = {g.index: g for g in gpus.gpus}
        frees = []
        for index in topology.gpu_indices:
            reading = readings.get(index)
            free = reading.memory_free if reading is not None else None
            frees.append(free)
            if free is None:
                verdict = "free memory unknown"
            elif free >= each:
                verdict = f"{format_bytes(free)} free: fits"
            else:
                verdict = f"{format_bytes(free)} free: {format_bytes(each - free)} short"
            name = reading.name if reading is not None else "?"
            lines.append(f"  GPU {index} ({name}): {verdict}")
        known = [f for f in frees if f is not None]
        tightest = min(known) if known else None
        figures = render_estimate(estimate)  # the verdict is per GPU, below
        lines[1:1] = [f"Per process ({topology.parallel.upper()}):", *figures]
        return Preflight(
            device, label, tightest, "free GPU memory (tightest GPU)", estimate, (), None,
            tuple(lines),
        )  # fmt: skip
    total = each * topology.nproc_per_node
    lines += [f"Per process ({topology.parallel.upper()}):", *render_estimate(estimate)]
    ram_line = f"{topology.nproc_per_node} processes x {format_bytes(each)} = {format_bytes(total)}"
    if ram_free is not None:
        fits = "it should fit" if total <= ram_free else f"{format_bytes(total - ram_free)} short"
        ram_line += f" of {format_bytes(ram_free)} available RAM: {fits}."
    lines.append(ram_line)
    together = dataclasses.replace(
        estimate,
        items=(
            *estimate.items,
            EstimateItem(
                "processes",
                "the other processes",
                total - each,
                f"{topology.nproc_per_node - 1} more process(es) x {format_bytes(each)}",
            ),
        ),
    )
    return Preflight(
        "cpu", label, ram_free, "available RAM", together, (), CPU_NOTE, (CPU_NOTE, *lines)
    )


def for_model(
    ws: Workspace,
    reg: Registry,
    model: str,
    config: TrainConfig,
    *,
    gpu_index: int = 0,
    topology: Topology | None = None,
    lengths: Sequence[int] | None = None,
) -> Preflight:
    """:func:`check` for a registered base model, with this machine's NVML and RAM readings.

    Raises:
        NotFoundError: no such model.
    """
    from appliance.models.use import model_folder

    folder = model_folder(ws, reg.models.get(model))
    gpus = read_gpus()
    try:
        model_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        device, label, free, free_label, _note = _device(gpus, gpu_index, None)
        reason = f"No memory estimate: cannot read {folder / 'config.json'} ({exc})"
        return Preflight(device, label, free, free_label, None, (), reason, (reason,))
    return check(
        model_config,
        config,
        gpus=gpus,
        gpu_index=gpu_index,
        ram_free=available_ram(),
        topology=topology,
        lengths=lengths,
    )


def _device(
    gpus: GpuState, gpu_index: int, ram_free: int | None
) -> tuple[str, str, int | None, str, str | None]:
    """(device, label, free bytes, what they measure, note) of the device the run would use."""
    reading = next((g for g in gpus.gpus if g.index == gpu_index), None)
    if gpus.available and reading is not None:
        return (
            "cuda",
            f"GPU {reading.index}: {reading.name}",
            reading.memory_free,
            "free GPU memory",
            None,
        )
    label = "CPU (no GPU chosen)" if gpus.available else "CPU (no NVIDIA GPU found)"
    return "cpu", label, ram_free, "available RAM", CPU_NOTE

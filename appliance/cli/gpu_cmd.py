"""``appliance gpu``: NVIDIA GPUs as NVML sees them."""

from __future__ import annotations

import typer

from appliance.cli.context import out, print_json
from appliance.gpu import format_bytes, read_gpus


def gpu(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object."),
) -> None:
    """Show each NVIDIA GPU: name, memory used/total, utilisation, temperature."""
    gpu_state = read_gpus()
    if as_json:
        print_json(gpu_state.to_dict())
        return
    if not gpu_state.available:
        out.print(gpu_state.summary())
        return
    for g in gpu_state.gpus:
        util = f"{g.utilization_pct}%" if g.utilization_pct is not None else "n/a"
        temp = f"{g.temperature_c} C" if g.temperature_c is not None else "n/a"
        out.print(
            f"GPU {g.index}: {g.name}  memory {format_bytes(g.memory_used)} / "
            f"{format_bytes(g.memory_total)}  utilisation {util}  temperature {temp}"
        )

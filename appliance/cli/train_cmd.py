"""``appliance train`` and ``appliance run list|show|stop|resume``.

``train`` prints the memory estimate, starts the training child, and follows its events with a
live progress line until the end; Ctrl-C asks the child to checkpoint and stop (twice: kill).
With ``--detach`` it returns at once and the run carries on in the background.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table

from appliance.cli.context import CliState, err, out, print_json, state
from appliance.errors import PassphraseError, TrainingError
from appliance.gpu import format_bytes
from appliance.registry import Registry
from appliance.training import events as ev
from appliance.training import launcher
from appliance.training.runfolder import LOG_FILE
from appliance.vault import Vault
from appliance.workspace import Workspace, read_only_reason

run_app = typer.Typer(
    name="run",
    help="Training runs: list, show (replays the events), stop, resume.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.command("train")(train)
    app.add_typer(run_app)


# --- the estimate ------------------------------------------------------------------------------


def _available_ram() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimate_lines(ws: Workspace, reg: Registry, model: str, config: Any) -> list[str]:
    """The estimate beside the free memory of GPU 0 (NVML), or a CPU note with free RAM."""
    import json

    from appliance.gpu import read_gpus
    from appliance.models.use import model_folder
    from appliance.training.estimate import estimate_memory, render_estimate, suggest_changes

    folder = model_folder(ws, reg.base_model(model))
    try:
        model_config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"No memory estimate: cannot read {folder / 'config.json'} ({exc})"]
    gpus = read_gpus()
    try:
        if gpus.available:
            free = gpus.gpus[0].memory_free
            estimate = estimate_memory(model_config, config, device="cuda")
            lines = render_estimate(
                estimate, free, suggest_changes(model_config, config, free, device="cuda")
            )
            return [f"GPU 0: {gpus.gpus[0].name}", *lines]
        estimate = estimate_memory(model_config, config, device="cpu")
    except TrainingError as exc:
        return [f"No memory estimate for this model: {exc}"]
    note = (
        "No NVIDIA GPU found: training runs on the CPU, in fp32 (slow; fine for small models "
        "such as the demo model)."
    )
    return [note, *render_estimate(estimate, _available_ram())]


# --- following a run ---------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _memory_text(event: ev.Memory | None) -> str:
    if event is None:
        return ""
    if event.gpus:
        gpu = event.gpus[0]
        if gpu.used is not None and gpu.total is not None:
            return f"GPU {format_bytes(gpu.used)}/{format_bytes(gpu.total)}"
        if gpu.allocated is not None:
            return f"GPU {format_bytes(gpu.allocated)}"
    return f"RAM {format_bytes(event.rss)}" if event.rss else ""


class ProgressView:
    """Turns events into terminal lines: one rewritten line on a terminal, else one per step."""

    def __init__(self) -> None:
        self.live = sys.stdout.isatty()
        self.memory: ev.Memory | None = None
        self._pending = False

    def _line(self, text: str) -> None:
        if self.live:
            sys.stdout.write("\r\x1b[2K" + text)
            self._pending = True
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def note(self, text: str) -> None:
        if self._pending:
            sys.stdout.write("\n")
            self._pending = False
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def show(self, event: ev.Event) -> None:
        if isinstance(event, ev.Memory):
            self.memory = event
        elif isinstance(event, ev.Started):
            resumed = f", resuming at step {event.start_step}" if event.start_step else ""
            self.note(
                f"Training on {event.device}: {event.total_steps} steps, "
                f"{event.train_examples} examples, {event.trainable_params:,} trainable of "
                f"{event.total_params:,} parameters{resumed}"
            )
            if event.dropped_examples:
                self.note(f"  {event.dropped_examples} examples truncated or dropped (too long)")
        elif isinstance(event, ev.Step):
            self._line(
                f"step {event.step}/{event.total_steps}  loss {event.loss:.4f}  "
                f"lr {event.lr:.2e}  {event.tokens_per_s:,.0f} tok/s  "
                f"ETA {_duration(event.eta_s)}  {_memory_text(self.memory)}".rstrip()
            )
        elif isinstance(event, ev.Eval):
            self.note(f"eval loss {event.eval_loss:.4f} at step {event.step}")
        elif isinstance(event, ev.Checkpoint):
            if not self.live:
                self.note(f"checkpoint {event.name}")
        elif isinstance(event, ev.Failed):
            self.note(f"failed: {event.message}")

    def close(self) -> None:
        if self._pending:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._pending = False


def follow(process: launcher.TrainingProcess, vault: Vault, reg: Registry) -> launcher.Outcome:
    """Show the child's events until it ends; Ctrl-C stops it gracefully, twice kills it."""
    view = ProgressView()
    interrupts = 0
    while True:
        try:
            for event in process.events():
                view.show(event)
            break
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 1:
                view.note("Stopping after the current step and a checkpoint (Ctrl-C again: kill)")
                process.stop()
            else:
                view.note("Killing the training process; resume from its last checkpoint.")
                process.kill()
    view.close()
    return launcher.wait_settled(process, vault, reg)


def report(outcome: launcher.Outcome) -> None:
    """Print how the run ended; a failure becomes the command's one-line error."""
    if outcome.state == "finished":
        done = outcome.finished
        parts = [f"Finished run {outcome.run_id}: adapter {outcome.adapter}"]
        if done is not None:
            if done.train_loss is not None:
                parts.append(f"train loss {done.train_loss:.4f}")
            if done.eval_loss is not None and done.eval_loss == done.eval_loss:
                parts.append(f"eval loss {done.eval_loss:.4f}")
            parts.append(f"{done.tokens_seen or 0:,} tokens")
            parts.append(f"{_duration(done.total_wall_s or done.wall_s)} wall")
            if done.peak_memory:
                parts.append(f"peak memory {format_bytes(done.peak_memory)}")
        out.print(", ".join(parts), markup=False)
    elif outcome.state == "stopped":
        out.print(
            f"Run {outcome.run_id} {outcome.message or 'stopped'}; continue it with "
            f"'appliance run resume {outcome.run_id}'",
            markup=False,
        )
    else:
        raise TrainingError(f"run {outcome.run_id} failed: {outcome.message}")


def _start(
    st: CliState, ws: Workspace, vault: Vault, reg: Registry, run_id: str, detach: bool
) -> None:
    process = launcher.launch(vault, reg, run_id, detach=detach)
    out.print(
        f"Run {run_id} started (pid {process.pid}); log: {process.folder / LOG_FILE}",
        markup=False,
    )
    if detach:
        out.print(
            f"Running in the background: 'appliance run show {run_id}' follows it, "
            f"'appliance run stop {run_id}' stops it.",
            markup=False,
        )
        return
    report(follow(process, vault, reg))


# --- verbs -------------------------------------------------------------------------------------


def train(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", help="Base model name (see 'appliance model list')."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset NAME (latest) or NAME@VERSION."),
    adapter: str = typer.Option(..., "--adapter", help="Name of the adapter; saved as NAME@N."),
    preset: str = typer.Option("balanced", "--preset", help="quick-test, balanced or thorough."),
    sets: list[str] = typer.Option(
        [], "--set", help="Change one setting, e.g. --set lr=1e-4 (repeatable)."
    ),
    detach: bool = typer.Option(False, "--detach", help="Start it and return; it runs on."),
) -> None:
    """Train a LoRA/QLoRA adapter in a child process, with a live progress line."""
    from appliance.datasets.store import resolve as resolve_dataset
    from appliance.training.settings import build_config

    config = build_config(preset, sets)
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        launcher.try_reconcile(vault, reg)
        reg.base_model(model)
        resolve_dataset(reg, dataset)
        for line in estimate_lines(ws, reg, model, config):
            out.print(line, markup=False)
        run_id = launcher.create_run(
            vault, reg, model=model, dataset=dataset, adapter_name=adapter, config=config
        )
        _start(st, ws, vault, reg, run_id, detach)


def _open(st: CliState, ws: Workspace) -> tuple[Registry, Vault | None]:
    """The registry, unlocked (to settle lost runs) when some run needs settling."""
    reg = st.registry(ws, unlock=False, readonly=True)
    lost = [r for r in reg.runs("running") if not launcher.process_alive(r["pid"], r["id"])]
    if not lost:
        return reg, None
    if read_only_reason(ws.home) is not None:
        err.print(
            f"note: {len(lost)} run(s) marked running have no process; they are settled by the "
            "next command run where the workspace is writable",
            markup=False,
        )
        return reg, None
    try:
        vault = st.vault(ws)
    except PassphraseError:
        err.print(
            f"note: {len(lost)} run(s) marked running have no process; give the passphrase to "
            "settle them",
            markup=False,
        )
        return reg, None
    reg.close()
    reg = st.registry(ws)
    launcher.try_reconcile(vault, reg)
    return reg, vault


def _public(reg: Registry, run: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id", "state", "pid", "base_model", "dataset", "dataset_version", "seed", "path",
        "created_at", "started_at", "finished_at", "updated_at", "failure_reason", "config",
    )  # fmt: skip
    return {**{k: run.get(k) for k in keys}, "adapters": launcher.run_adapters(reg, run["id"])}


@run_app.command("list")
def list_(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """List runs and their states (runs whose process is gone are settled first)."""
    st = state(ctx)
    reg, _ = _open(st, st.workspace())
    with reg:
        runs = [_public(reg, r) for r in reg.runs()]
    if json_out:
        print_json(runs)
        return
    if not runs:
        out.print("No runs yet; start one with 'appliance train'.")
        return
    table = Table("state", "model", "dataset", "adapter", "created")
    table.columns.insert(0, Column("run", no_wrap=True))
    for r in runs:
        label = r["state"] + (f" ({r['failure_reason']})" if r["state"] == "failed" else "")
        table.add_row(
            r["id"],
            label,
            r["base_model"] or "-",
            f"{r['dataset']}@{r['dataset_version']}" if r["dataset"] else "-",
            ", ".join(r["adapters"]) or "-",
            str(r["created_at"])[:19].replace("T", " "),
        )
    out.print(table)


def _event_line(event: ev.Event) -> str | None:
    when = f"{event.time:.0f}"
    if isinstance(event, ev.Started):
        return f"{when} started on {event.device}: step {event.start_step}/{event.total_steps}"
    if isinstance(event, ev.Step):
        return (
            f"{when} step {event.step}/{event.total_steps} loss {event.loss:.4f} "
            f"lr {event.lr:.2e} {event.tokens_per_s:,.0f} tok/s"
        )
    if isinstance(event, ev.Eval):
        return f"{when} eval loss {event.eval_loss:.4f} at step {event.step}"
    if isinstance(event, ev.Checkpoint):
        return f"{when} checkpoint {event.name}"
    if isinstance(event, ev.Stopped):
        return f"{when} stopped at step {event.step}"
    if isinstance(event, ev.Finished):
        return f"{when} finished at step {event.step}: eval loss {event.eval_loss}"
    if isinstance(event, ev.Failed):
        return f"{when} failed: {event.message}"
    return None


@run_app.command("show")
def show(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The run's id (see 'appliance run list')."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object with the events."),
) -> None:
    """Show a run and replay its events from metrics.jsonl."""
    st = state(ctx)
    ws = st.workspace()
    reg, _ = _open(st, ws)
    with reg:
        run = _public(reg, reg.run(run_id))
    metrics = ws.home / str(run["path"]) / ev.METRICS_FILE
    events = list(ev.replay(metrics)) if metrics.exists() else []
    if json_out:
        print_json({**run, "events": [e.to_dict() for e in events]})
        return
    out.print(f"Run {run['id']}: {run['state']}", markup=False)
    if run["failure_reason"]:
        out.print(f"  reason: {run['failure_reason']}", markup=False)
    out.print(f"  model {run['base_model']}, dataset {run['dataset']}@{run['dataset_version']}")
    if run["adapters"]:
        out.print(f"  adapter {', '.join(run['adapters'])}", markup=False)
    memory = [e for e in events if isinstance(e, ev.Memory)]
    for event in events:
        line = _event_line(event)
        if line is not None:
            out.print("  " + line, markup=False)
    if memory:
        out.print(f"  last memory reading: {_memory_text(memory[-1])}", markup=False)


@run_app.command("stop")
def stop(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The run's id."),
    timeout: float = typer.Option(
        launcher.STOP_TIMEOUT_S,
        "--timeout",
        help="Seconds to wait for the checkpoint before a kill.",
    ),
) -> None:
    """Stop a run gracefully: it finishes its step, saves a checkpoint and exits."""
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        outcome = launcher.stop_run(vault, reg, run_id, timeout=timeout)
    report(outcome)


@run_app.command("resume")
def resume(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="A stopped or failed run's id."),
    detach: bool = typer.Option(False, "--detach", help="Start it and return; it runs on."),
) -> None:
    """Continue a run from its last checkpoint that verifies."""
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        launcher.try_reconcile(vault, reg)
        _start(st, ws, vault, reg, run_id, detach)

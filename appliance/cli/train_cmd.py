"""``appliance train`` and ``appliance run list|show|stop|resume``: a terminal over the run core.

``train`` checks the request, prints the pre-flight estimate (:mod:`appliance.training.preflight`),
starts the training child (:mod:`appliance.training.runs`) and follows its events with a live
progress line rendered from :class:`~appliance.training.progress.RunProgress` until the end;
Ctrl-C asks the child to checkpoint and stop (twice: kill). With ``--detach`` it returns at once
and the run carries on in the background. ``run show`` replays the same model from the run's
``metrics.jsonl``. Nothing here decides anything about a run; it only prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Column, Table

from appliance import preferences
from appliance.cli.context import CliState, err, out, print_json, state
from appliance.errors import PassphraseError, TrainingError
from appliance.gpu import GpuState, read_gpus
from appliance.registry import Registry
from appliance.registry.rows import RunRow
from appliance.training import events as ev
from appliance.training import preflight, runs
from appliance.training.config import TrainConfig
from appliance.training.placement import (
    Placement,
    Topology,
    describe_global_batch,
    preferred_gpus,
    resolve_topology,
)
from appliance.training.process import TrainingProcess
from appliance.training.progress import RunProgress, clock, event_line, final_metrics
from appliance.training.runfolder import LOG_FILE
from appliance.vault import Vault
from appliance.workspace import Workspace, read_only_reason

GPUS_HELP = (
    "GPUs to train on: all (the CPU when there is none), indices such as 0,2, or none. "
    "Default: the GPUs the workspace allows (Settings page, HOME/settings.json; all unless "
    "limited there), or the CPU with --processes."
)
PROCESSES_HELP = "Train with N data-parallel processes on the CPU (gloo backend)."
NNODES_HELP = "Machines taking part in the run (each runs the same command)."
NODE_RANK_HELP = "This machine's rank, 0 to nnodes-1 (node 0 owns the run)."
RENDEZVOUS_HELP = (
    "HOST:PORT of node 0 where the machines meet (torchrun c10d); an address off this machine "
    "must be on the network allow-list ('appliance network allow')."
)

run_app = typer.Typer(
    name="run",
    help="Training runs: list, show (replays the events), stop, resume.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.command("train")(train)
    app.add_typer(run_app)


# --- following a run ---------------------------------------------------------------------------


class ProgressView:
    """Prints a run's :class:`RunProgress` as it moves: one rewritten line on a terminal, else
    one line per step, and a line of its own for each milestone (:func:`event_line`)."""

    def __init__(self, progress: RunProgress | None = None) -> None:
        self.live = sys.stdout.isatty()
        self.progress = progress if progress is not None else RunProgress()
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
        self.progress.apply(event)
        if isinstance(event, ev.Step):
            self._line(self.progress.status_line())
        elif isinstance(event, ev.Started | ev.Eval | ev.Failed) or (
            isinstance(event, ev.Checkpoint) and not self.live
        ):
            # Stopped and finished are reported once the run is settled (report()).
            text = event_line(event)
            if text is not None:
                self.note(text)

    def close(self) -> None:
        if self._pending:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._pending = False


def follow(
    process: TrainingProcess, vault: Vault, reg: Registry, history: RunProgress | None = None
) -> runs.Outcome:
    """Show the child's events until it ends; Ctrl-C stops it gracefully, twice kills it.

    ``history`` holds the run's earlier launches, so that a resumed run's smoothed loss and
    elapsed time go on from where they were, as on the Train page.
    """
    view = ProgressView(history)
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
    return runs.wait_settled(process, vault, reg)


def report(outcome: runs.Outcome) -> None:
    """Print how the run ended; a failure becomes the command's one-line error."""
    if outcome.state == "finished":
        done = outcome.finished
        parts = f"Finished run {outcome.run_id}: adapter {outcome.adapter}"
        if done is not None:
            parts += ", " + final_metrics(done)
        out.print(parts, markup=False)
    elif outcome.state == "stopped":
        out.print(
            f"Run {outcome.run_id} {outcome.message or 'stopped'}; continue it with "
            f"'appliance run resume {outcome.run_id}'",
            markup=False,
        )
    else:
        raise TrainingError(f"run {outcome.run_id} failed: {outcome.message}")


def _start(
    ws: Workspace,
    vault: Vault,
    reg: Registry,
    run_id: str,
    detach: bool,
    topology: Topology | None = None,
    placement: Placement | None = None,
) -> None:
    metrics = ws.home / str(reg.runs.get(run_id)["path"]) / ev.METRICS_FILE
    history = _replay(metrics)  # read before the new launch can append to it
    process = runs.launch(vault, reg, run_id, detach=detach, topology=topology, placement=placement)
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
    report(follow(process, vault, reg, history))


def _replay(metrics: Path) -> RunProgress:
    """The progress recorded in ``metrics``; empty for a new run or an unreadable file."""
    try:
        return RunProgress.replay(metrics) if metrics.exists() else RunProgress()
    except (OSError, ev.EventError):
        return RunProgress()


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
    gpus: str | None = typer.Option(None, "--gpus", help=GPUS_HELP, show_default=False),
    processes: int | None = typer.Option(None, "--processes", help=PROCESSES_HELP),
    nnodes: int = typer.Option(1, "--nnodes", help=NNODES_HELP),
    node_rank: int = typer.Option(0, "--node-rank", help=NODE_RANK_HELP),
    rendezvous: str | None = typer.Option(None, "--rendezvous", help=RENDEZVOUS_HELP),
) -> None:
    """Train a LoRA/QLoRA adapter in a child process, with a live progress line."""
    from appliance.training.settings import build_config

    config = build_config(preset, sets)
    st = state(ctx)
    ws = st.workspace()
    placement, found = _placement(ws, gpus, processes, nnodes, node_rank, rendezvous)
    # The devices are checked before the passphrase is asked for.
    topology = resolve_topology(placement, found, parallel=config.parallel)
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        runs.try_reconcile(vault, reg)
        # Everything is checked before anything is shown or made.
        ds = runs.check_new_run(
            reg, model=model, dataset=dataset, adapter_name=adapter, config=config
        )
        topology = runs.plan_topology(config, placement, train_examples=ds.get("train_rows"))
        runs.check_network(vault, topology)
        from appliance.training.lengths import training_lengths

        lengths = training_lengths(vault, reg, model, dataset, config)
        estimate = preflight.for_model(ws, reg, model, config, topology=topology, lengths=lengths)
        for line in estimate.lines:
            out.print(line, markup=False)
        _print_placement(ws, config, topology)
        run_id = runs.create_run(
            vault, reg, model=model, dataset=dataset, adapter_name=adapter, config=config
        )
        _start(ws, vault, reg, run_id, detach, topology)


def _placement(
    ws: Workspace,
    gpus: str | None,
    processes: int | None,
    nnodes: int,
    node_rank: int,
    rendezvous: str | None,
) -> tuple[Placement, GpuState]:
    """The placement asked for, and the NVML reading it is checked against.

    Without ``--gpus`` it trains on the GPUs the workspace allows (its ``training_gpus``
    setting), or on the CPU when ``--processes`` asks for CPU processes.
    """
    found = read_gpus()
    if gpus is None:
        if processes is None:
            allowed = preferences.load(ws).training_gpus
            where = str(preferences.settings_path(ws))
            gpus = preferred_gpus(allowed, found, where=where)
        else:
            gpus = "all"
    return Placement(gpus, processes, nnodes, node_rank, rendezvous), found


def _print_placement(ws: Workspace, config: TrainConfig, topology: Topology) -> None:
    """Where it trains, the global batch, and (when the run leaves this machine) the allow-list."""
    from appliance import netpolicy

    sched = config.schedule
    out.print(f"Devices: {topology.describe()}", markup=False)
    out.print(
        describe_global_batch(
            sched.micro_batch_size, sched.gradient_accumulation_steps, topology.world_size
        ),
        markup=False,
    )
    entries = netpolicy.load(ws)
    if entries or topology.nnodes > 1:
        out.print(netpolicy.allow_list_line(entries), markup=False)


def _open(st: CliState, ws: Workspace) -> tuple[Registry, Vault | None]:
    """The registry, unlocked (to settle lost runs) when some run needs settling."""
    reg = st.registry(ws, unlock=False, readonly=True)
    lost = runs.unsettled(reg)
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
    runs.try_reconcile(vault, reg)
    return reg, vault


def _public(reg: Registry, run: RunRow) -> dict[str, Any]:
    keys = (
        "id", "state", "pid", "base_model", "dataset", "dataset_version", "seed", "path",
        "created_at", "started_at", "finished_at", "updated_at", "failure_reason", "config",
    )  # fmt: skip
    return {**{k: run.get(k) for k in keys}, "adapters": runs.run_adapters(reg, run["id"])}


@run_app.command("list")
def list_(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """List runs and their states (runs whose process is gone are settled first)."""
    st = state(ctx)
    reg, _ = _open(st, st.workspace())
    with reg:
        runs = [_public(reg, r) for r in reg.runs.all()]
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
        run = _public(reg, reg.runs.get(run_id))
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
    progress = RunProgress()
    for event in events:
        progress.apply(event)
        line = event_line(event)
        if line is not None:
            out.print(f"  {clock(event.time)} {line}", markup=False)
    if progress.steps:
        out.print(f"  last step: {progress.status_line()}", markup=False)
    memory = progress.memory_text()
    if memory:
        out.print(f"  last memory reading: {memory}", markup=False)


@run_app.command("stop")
def stop(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="The run's id."),
    timeout: float = typer.Option(
        runs.STOP_TIMEOUT_S,
        "--timeout",
        help="Seconds to wait for the checkpoint before a kill.",
    ),
) -> None:
    """Stop a run gracefully: it finishes its step, saves a checkpoint and exits."""
    st = state(ctx)
    ws = st.workspace()
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        outcome = runs.stop_run(vault, reg, run_id, timeout=timeout)
    report(outcome)


@run_app.command("resume")
def resume(
    ctx: typer.Context,
    run_id: str = typer.Argument(..., help="A stopped or failed run's id."),
    detach: bool = typer.Option(False, "--detach", help="Start it and return; it runs on."),
    gpus: str | None = typer.Option(None, "--gpus", help=GPUS_HELP, show_default=False),
    processes: int | None = typer.Option(None, "--processes", help=PROCESSES_HELP),
    nnodes: int = typer.Option(1, "--nnodes", help=NNODES_HELP),
    node_rank: int = typer.Option(0, "--node-rank", help=NODE_RANK_HELP),
    rendezvous: str | None = typer.Option(None, "--rendezvous", help=RENDEZVOUS_HELP),
) -> None:
    """Continue a run from its last checkpoint that verifies, on any number of processes."""
    st = state(ctx)
    ws = st.workspace()
    placement, found = _placement(ws, gpus, processes, nnodes, node_rank, rendezvous)
    resolve_topology(placement, found)  # the devices are checked before the passphrase
    vault = st.vault(ws)
    with st.registry(ws) as reg:
        runs.try_reconcile(vault, reg)
        _start(ws, vault, reg, run_id, detach, placement=placement)

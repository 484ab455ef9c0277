"""Jobs: long work (model import, export, generation, evaluation...) in a child process.

The desktop process never loads torch, transformers, peft or bitsandbytes, and never blocks its
window: every heavy piece of work runs as a *job*, a child process with one contract, the same
for every kind of work and the same shape as the training worker's:

- **Command line**: ``python -m appliance.jobs KIND --home HOME`` (:meth:`JobRequest.command`),
  something an administrator could type.
- **stdin**: one JSON line, the request (:meth:`JobRequest.request_line`): the parameters, and
  the secrets the job needs and nothing more: the data keys of the vault objects it reads (never
  the master key) and, for a job that writes registry rows, the audit key. Never argv,
  environment or disk. An interactive job (``interactive=True``, e.g. generation) then reads
  further JSON lines, one command each, until stdin closes.
- **stdout**: JSON lines, one event each (:mod:`appliance.jobs.events`): ``progress`` as it
  goes, ``output`` for streamed partial results (generated tokens), then exactly one of
  ``result`` (exit 0) or ``failed`` (exit 1, 2 for a usage error, 130 when cancelled) with the
  same one-line message the CLI prints. Logs and library noise go to stderr.
- **Cancel**: SIGTERM; the job stops at the next Python instruction, its temporary files are
  removed by the code that made them, and nothing half-written is left in place (atomic writes).

The parent side is :class:`JobRequest` (what to run) plus either :func:`run_job` (blocking, for
the CLI and tests) or ``gui.process.JobProcess`` (QProcess, for the desktop app). The child side
is :mod:`appliance.jobs.child`; the kinds and their handlers are listed in
:mod:`appliance.jobs.kinds`.
"""

from __future__ import annotations

from appliance.jobs.events import (
    JobEvent,
    JobFailed,
    JobOutput,
    JobProgress,
    JobResult,
    job_reader,
    parse_job_event,
)
from appliance.jobs.request import JobRequest, KeyRing
from appliance.jobs.runner import JobError, JobOutcome, run_job

__all__ = [
    "JobError",
    "JobEvent",
    "JobFailed",
    "JobOutcome",
    "JobOutput",
    "JobProgress",
    "JobRequest",
    "JobResult",
    "KeyRing",
    "job_reader",
    "parse_job_event",
    "run_job",
]

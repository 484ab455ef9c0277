"""The CLI's progress bar for long work that reports ``(done, total, stage)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from appliance.cli.context import err

StageCallback = Callable[[int, int, str], None]


@contextmanager
def stage_progress(
    stages: Mapping[str, str], *, counting: str = "bytes"
) -> Iterator[StageCallback | None]:
    """Yield a callback that draws a progress bar on stderr, or None off a terminal.

    Args:
        stages: the caller's stage names mapped to what the bar says during each.
        counting: ``bytes`` (sizes such as 1.2/3.4 GB) or ``items`` (12/40).
    """
    if not err.is_terminal:
        yield None
        return
    width = max((len(text) for text in stages.values()), default=20)
    bar = Progress(
        TextColumn(f"{{task.description:<{width}}}"),
        BarColumn(),
        DownloadColumn() if counting == "bytes" else MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("Starting", total=None)

    def update(done: int, total: int, stage: str) -> None:
        bar.update(
            task,
            description=stages.get(stage, stage),
            completed=done,
            total=total if total > 0 else None,
        )

    with bar:
        yield update

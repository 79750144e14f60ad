"""The one progress style of every long job: a rich bar on stderr, and stage lines.

Every command that works for more than a moment shows the same bar::

    render orbit ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 12/60 frames 0:00:03 ETA 0:00:12

title, bar, done/total, the job's own fields, elapsed time, ``ETA`` and the time remaining.
Bars and stage lines go to stderr, so stdout stays for results a caller may pipe.
``rich`` is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["log_stage", "progress_bar"]


def progress_bar(title: str | None = None, fields: Sequence[str] = (), *,
                 quiet: bool = False, transient: bool = False,
                 counts: bool = True) -> Progress:
    """A rich ``Progress`` with the house columns, printing to stderr; use it as a context.

    Args:
        title: shown in bold before the bar (plain text, not rich markup); ``None`` shows
            each task's ``description`` instead (one bar per task, titled by ``add_task``).
        fields: rich format strings of the job's own columns, placed after ``M/N``, e.g.
            ``"loss {task.fields[loss]}"`` (the task must then be given ``loss=...``).
        quiet: build a disabled bar that prints nothing.
        transient: remove the bar from the terminal when the block ends.
        counts: show ``completed/total``; ``False`` for a task whose total is not a count
            (a fraction of a time budget, say).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as _Progress

    heading = "{task.description}" if title is None else escape(title)
    columns = [TextColumn(f"[bold]{heading}[/bold]"), BarColumn()]
    if counts:
        columns.append(MofNCompleteColumn())
    columns += [TextColumn(field) for field in fields]
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return _Progress(*columns, console=Console(stderr=True), disable=quiet,
                     transient=transient)


def log_stage(message: str, quiet: bool = False) -> None:
    """Print one stage line (``message``, plain text) to stderr unless ``quiet``.

    For the steps around a bar (loading, writing, "wrote OUT"): unlike a bar, a line also
    reads well in a log file or CI output, where stderr is not a terminal.
    """
    if quiet:
        return
    from rich.console import Console

    Console(stderr=True, highlight=False).print(message, markup=False, soft_wrap=True)

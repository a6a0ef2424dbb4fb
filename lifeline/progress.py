"""Progress of a slow start-up (compiling kernels, starting servers): a bar on a terminal, and one
plain line per stage where there is none (a log file, journald, CI), so nothing looks hung.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: Called at the start of each stage with (number from 1, count of stages, what it does).
OnStage = Callable[[int, int, str], None]


@contextlib.contextmanager
def stage_progress(title: str, *, console: Console | None = None,
                   log: logging.Logger | None = None) -> Iterator[OnStage]:
    """Yield the `OnStage` callback for a run of stages titled `title` (e.g. "compiling kernels").

    On a terminal (`console.is_terminal`) the stages move a transient progress bar; elsewhere
    each is one line, `title i/n: stage`, through `log` (INFO) if given, else printed on `console`.
    """
    console = console or Console(stderr=log is not None)
    if not console.is_terminal:
        def line(i: int, n: int, label: str) -> None:
            if log is not None:
                log.info("%s %d/%d: %s", title, i, n, label)
            else:
                console.print(f"  {title} {i}/{n}: {label}", highlight=False, soft_wrap=True)
        yield line
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(title, total=None)

        def advance(i: int, n: int, label: str) -> None:
            bar.update(task, description=f"{title}: {label}", completed=i - 1, total=n)

        yield advance
        bar.update(task, completed=bar.tasks[0].total or 0)


__all__ = ["OnStage", "stage_progress"]

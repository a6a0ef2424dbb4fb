"""The "## Faults" table of RESULTS.md: one row per injected fault, what was lost, how long recovery took.

Fault runs live in several modules (the whole chain in `benchmarks.faults`, agent-local faults in
`benchmarks.faults_agent`); each writes its own rows with `write_fault_rows`, which keeps the rows
of faults it did not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from benchmarks.suite import read_section, table_rows, write_section

SECTION = "## Faults"
HEADER = ("| fault | load while it happened | offered | stored | lost | duplicates in the store | dead-lettered "
          "| recovery s | command | when (UTC) |\n"
          "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- |\n")
#: Cells of a row written before the offered, stored and dead-lettered columns.
_OLD_CELLS = 7
INTRO = ("Each fault is injected while data flows; afterwards the store is read back and compared with "
         "what was sent. *Offered*: what the agents produced (alerts seq 1..last, or every alert they logged); "
         "*stored*: how many of those the store holds; *lost* must be nothing: every alert and summary row "
         "the agent produced is in the store exactly once, except what the fault itself destroyed (rows on a "
         "damaged part of an outbox file), which is counted; *dead-lettered*: what was set aside for an "
         "operator instead of delivered (the gateway's dead-letter file, with the reason). *Recovery* is the time from the end of the fault until data flows "
         "again end to end (the first new alert or row in the store), or until the restarted agent took "
         "input again. 2-core machine shared with other work.\n")


@dataclass(frozen=True)
class FaultOutcome:
    """One fault run, as a row of the table."""

    fault: str
    load: str
    lost: str
    duplicates: int
    recovery_s: float | None
    command: str
    #: What the source produced (e.g. alerts seq 1..last), what the store holds of it, and what
    #: was set aside for an operator instead of delivered; "-" where a run does not count it.
    offered: str = "-"
    stored: str = "-"
    dead_lettered: str = "-"

    def row(self, when: str) -> str:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f}"
        return (f"| {self.fault} | {self.load} | {self.offered} | {self.stored} | {self.lost} | "
                f"{self.duplicates} | {self.dead_lettered} | {recovery} | `{self.command}` | {when} |")


def _widened(row: str) -> str:
    """A row written before the offered, stored and dead-lettered columns, with "-" in them."""
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    if len(cells) != _OLD_CELLS:
        return row
    fault, load, lost, duplicates, *rest = cells
    return "| " + " | ".join([fault, load, "-", "-", lost, duplicates, "-", *rest]) + " |"


def write_fault_rows(outcomes: list[FaultOutcome]) -> None:
    """Put these outcomes in the table, replacing rows of the same fault and keeping the others."""
    rows = {fault: _widened(row) for fault, row in table_rows(read_section(SECTION)).items()}
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    for outcome in outcomes:
        rows[outcome.fault] = outcome.row(when)
    write_section(SECTION, INTRO + "\n" + HEADER + "\n".join(rows.values()) + "\n")

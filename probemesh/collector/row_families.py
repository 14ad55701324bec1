"""A metric family held as rows of numbers rather than Sample objects.

Remote write snapshots the per-pair counters and the histograms: hundreds of
thousands of series at tens of thousands of pairs. Built as prometheus_client
families, each series was a Sample with a label dict of its own, only for the
encoder to read the labels back out of it. A RowFamily keeps what a series
shares with its neighbours once: a row is one owner's label values (a check x
agent pair, a histogram's check x country) and its numbers, one per column;
a column is a sample name and at most one label of its own (a counter's
outcome or reason, a bucket's ``le``). The remote-write encoder reads the rows
directly (remote_write._row_series); anything else reading ``samples`` gets
the same Samples a prometheus_client family of the same data would hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from prometheus_client.core import Metric
from prometheus_client.samples import Sample


class Column(NamedTuple):
    """One series of every row: its sample name and its own label, if any."""

    sample: str
    label: str | None = None
    value: str = ""


Row = tuple[Sequence[str], Sequence[float]]
"""(the owner's label values, one number per column)."""


class RowFamily(Metric):
    """A family whose series are rows x columns; see the module docstring."""

    def __init__(
        self,
        name: str,
        documentation: str,
        typ: str,
        labels: Sequence[str],
        columns: Sequence[Column],
        rows: list[Row],
    ) -> None:
        super().__init__(name, documentation, typ)
        self.labels = tuple(labels)
        self.columns = tuple(columns)
        self.rows = rows

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        """The series as Samples, row by row and column by column."""
        out = []
        for values, numbers in self.rows:
            base = list(zip(self.labels, values, strict=True))
            for column, number in zip(self.columns, numbers, strict=True):
                own = [(column.label, column.value)] if column.label is not None else []
                out.append(Sample(column.sample, dict(base + own), number))
        return out

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        """Metric.__init__ sets an empty list; the rows are the series."""

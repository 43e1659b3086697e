"""What a logged metric is once recorded: one value of one participant's step, in one round."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload


@dataclass(frozen=True)
class MetricRecord:
    """One ``log_metric`` call. ``round``: how many times this participant had already run
    this step in this run (from 0); ``participant``: ``"aggregator"`` or a collaborator's name."""

    run_id: str
    step: str
    participant: str
    round: int
    time: float
    name: str
    value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricRecord:
        return cls(str(data["run_id"]), str(data["step"]), str(data["participant"]),
                   int(data["round"]), float(data["time"]), str(data["name"]),
                   float(data["value"]))


class Metrics(Sequence[MetricRecord]):
    """A run's metric records, in the order they were logged."""

    def __init__(self, records: Iterable[MetricRecord] = ()) -> None:
        self._records = list(records)

    @overload
    def __getitem__(self, index: int) -> MetricRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Metrics: ...

    def __getitem__(self, index: int | slice) -> MetricRecord | Metrics:
        if isinstance(index, slice):
            return Metrics(self._records[index])
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[MetricRecord]:
        return iter(self._records)

    def __repr__(self) -> str:
        return f"Metrics({len(self)} records: {', '.join(self.names()) or 'none'})"

    def names(self) -> list[str]:
        return list(dict.fromkeys(r.name for r in self._records))

    def participants(self) -> list[str]:
        return list(dict.fromkeys(r.participant for r in self._records))

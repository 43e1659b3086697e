"""What a logged metric is once recorded: one value of one participant's step, in one round."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, fields
from typing import Any, overload

# The Metaflow artifact holding a recorded task's metrics (a list of MetricRecord.to_dict());
# reserved: a flow attribute of that name is refused while the flow runs.
METRICS_ARTIFACT = "fedloom_metrics"


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


Param = str | int | float


class Metrics(Sequence[MetricRecord]):
    """A run's metric records, in the order the aggregator received them. ``flow``: the flow's
    name; ``params``: the run's parameters (the flow's attributes that were numbers or text
    when it started), both for exporters such as :func:`fedloom.tracking.to_mlflow`."""

    def __init__(self, records: Iterable[MetricRecord] = (), *, flow: str = "",
                 params: Mapping[str, Param] | None = None) -> None:
        self._records = list(records)
        self.flow = flow
        self.params: dict[str, Param] = dict(params or {})

    def _like(self, records: Iterable[MetricRecord]) -> Metrics:
        return Metrics(records, flow=self.flow, params=self.params)

    @overload
    def __getitem__(self, index: int) -> MetricRecord: ...

    @overload
    def __getitem__(self, index: slice) -> Metrics: ...

    def __getitem__(self, index: int | slice) -> MetricRecord | Metrics:
        if isinstance(index, slice):
            return self._like(self._records[index])
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

    @property
    def run_id(self) -> str:
        """The run the records are of ("" when there are none)."""
        return self._records[0].run_id if self._records else ""

    def steps(self) -> list[str]:
        return list(dict.fromkeys(r.step for r in self._records))

    def where(self, *, name: str | None = None, participant: str | None = None,
              step: str | None = None) -> Metrics:
        """The records matching every filter given."""
        return self._like(r for r in self._records
                          if (name is None or r.name == name)
                          and (participant is None or r.participant == participant)
                          and (step is None or r.step == step))

    def latest(self) -> dict[str, dict[str, float]]:
        """Metric name -> participant -> the latest value it logged."""
        latest: dict[str, dict[str, float]] = {}
        for r in self._records:
            latest.setdefault(r.name, {})[r.participant] = r.value
        return latest

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self._records]

    @classmethod
    def from_dicts(cls, rows: Iterable[dict[str, Any]]) -> Metrics:
        return cls(MetricRecord.from_dict(row) for row in rows)

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame``, one row per record (columns as :class:`MetricRecord`)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Metrics.to_pandas() needs pandas: pip install pandas") from None
        columns = [f.name for f in fields(MetricRecord)]
        return pd.DataFrame([astuple(r) for r in self._records], columns=columns)

    def plot(self) -> Any:
        """Charts of every metric by round, one line per participant (a notebook shows them)."""
        from fedloom.tracking.charts import MetricCharts  # the other half of tracking

        return MetricCharts(self)


def run_params(state: Mapping[str, object], max_chars: int = 6000) -> dict[str, Param]:
    """A flow's parameters, from its state when it starts: the attributes that are numbers
    (bools excluded) or text of at most ``max_chars`` (MLflow's limit for a value)."""
    return {name: value for name, value in state.items()
            if (isinstance(value, (int, float)) and not isinstance(value, bool))
            or (isinstance(value, str) and len(value) <= max_chars)}

"""Counters and histograms for the hot path: plain numbers, exported when scraped.

prometheus-client's own metrics take a lock and run several checks on every
update (a histogram's observe is two locked increments and a Python loop over
its buckets; labels() validates and locks again), about 60 Python calls a
request at the edge. Aqueduct's processes update their metrics only from their
event loop's thread, so a plain `+=` is enough; these register as collectors
and hand prometheus-client the numbers at scrape time, under the same names,
labels and bucket semantics (a value lands in the first bucket whose bound is
>= it). A scrape from another thread (the edge's metrics port) copies each
dict in one step under the GIL, so it sees whole values.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# How the library spells a bucket bound ("0.01", "+Inf"); untyped there.
bound_name: Callable[[float], str] = floatToGoString


class CounterCell:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramCell:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Counters(Collector):
    """A counter family: `labels(...)` is one dict lookup, `inc` one addition."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self._cells: dict[tuple[str, ...], CounterCell] = {}
        registry.register(self)

    def labels(self, *values: str) -> CounterCell:
        cell = self._cells.get(values)
        if cell is None:
            cell = self._cells[values] = CounterCell()
        return cell

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, cell in list(self._cells.items()):
            family.add_metric(list(values), cell.value)
        yield family


class Histograms(Collector):
    """A histogram family with fixed buckets (+Inf added)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.bounds = (*sorted(float(b) for b in buckets), math.inf)
        self._names = [bound_name(b) for b in self.bounds]
        self._cells: dict[tuple[str, ...], HistogramCell] = {}
        registry.register(self)

    def labels(self, *values: str) -> HistogramCell:
        cell = self._cells.get(values)
        if cell is None:
            cell = self._cells[values] = HistogramCell(self.bounds)
        return cell

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, cell in list(self._cells.items()):
            counts, total, cumulative = list(cell.counts), cell.sum, 0
            buckets = []
            for bound, count in zip(self._names, counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            family.add_metric(list(values), buckets, total)
        yield family

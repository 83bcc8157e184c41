"""Prometheus metrics of a serving run, computed from the run's own counters when scraped.

`serving_registry(board)` returns a fresh `CollectorRegistry` (one per web server, never the global default)
whose one collector turns `Board.counters()` into counters per source, per-class frame counts, and a
capture-to-label latency histogram. Nothing is recorded per frame for Prometheus: the latency histogram's
buckets are sums over the run's fine `LatencyHistogram` bins, so a scrape costs the loop nothing.

    distill_frames_captured_total{source="cam.mp4"} 250.0
    distill_frames_classified_total{source="cam.mp4"} 248.0
    distill_frames_by_class_total{source="cam.mp4",label="idle"} 120.0
    distill_capture_to_label_seconds_bucket{source="cam.mp4",le="0.01"} 231.0

This module does not serve HTTP; `distill.realtime.web` exposes the registry at `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from distill.realtime._state import LatencyHistogram
from distill.realtime.live import Board, SourceCounters

# Bucket bounds in seconds: each is a whole number of LatencyHistogram bins (0.25 ms), so counts are exact.
LATENCY_BUCKETS_S = (0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

_COUNTERS = (  # (metric name without _total, help, SourceCounters field)
    ("distill_frames_captured", "Frames read from the source.", "captured"),
    ("distill_frames_classified", "Frames the student classified.", "classified"),
    ("distill_frames_dropped", "Frames replaced by a newer one before the student took them.", "dropped"),
    ("distill_fallbacks", "Teacher calls about frames the student was unsure of.", "fallbacks"),
    ("distill_reconnects", "Times a live source was reopened after dropping out.", "reconnects"),
    ("distill_label_changes", "Changes of the shown label.", "changes"),
)


def serving_registry(board: Board) -> CollectorRegistry:
    """A registry holding only this run's metrics (so two servers in one process never mix)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ServingCollector(board))
    return registry


class ServingCollector(Collector):
    """Reads the board's counters at scrape time."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        sources = self.board.counters()
        for name, documentation, attr in _COUNTERS:
            family = CounterMetricFamily(name, documentation, labels=["source"])
            for s in sources:
                family.add_metric([s.name], getattr(s, attr))
            yield family
        by_class = CounterMetricFamily(
            "distill_frames_by_class", "Frames classified, by the label shown for them.", labels=["source", "label"]
        )
        for s in sources:
            for label, count in zip(self.board.classes, s.class_counts):
                by_class.add_metric([s.name, label], count)
        yield by_class
        latency = HistogramMetricFamily(
            "distill_capture_to_label_seconds",
            "Time from decoding a frame to its label being shown.",
            labels=["source"],
        )
        for s in sources:
            latency.add_metric([s.name], latency_buckets(s), sum_value=s.latency_sum_s)
        yield latency
        up = GaugeMetricFamily("distill_source_up", "1 while the source delivers frames.", labels=["source"])
        for s in sources:
            up.add_metric([s.name], 1.0 if s.status == "running" else 0.0)
        yield up
        yield GaugeMetricFamily(
            "distill_uptime_seconds", "Seconds since serving started.", value=time.monotonic() - self.board.start_mono
        )


def latency_buckets(source: SourceCounters) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets (`le` bound, count) from the fine histogram's bins."""
    cumulative = np.cumsum(source.latency)
    buckets = []
    for bound in LATENCY_BUCKETS_S:
        bins = round(bound / LatencyHistogram.BIN_S)  # bins [0, bins) hold latencies below `bound`
        buckets.append((repr(bound), float(cumulative[min(bins, len(cumulative)) - 1])))
    buckets.append(("+Inf", float(cumulative[-1])))
    return buckets

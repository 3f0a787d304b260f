"""The server's counters, in Prometheus' text exposition format (written by hand: no client library needed)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

# request latency buckets, seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HELP = {
    "swiftsam_requests_total": ("counter", "HTTP requests answered, by endpoint and status code"),
    "swiftsam_request_seconds": ("histogram", "time to answer a request, by endpoint"),
    "swiftsam_rejected_total": ("counter", "requests refused before reaching the model, by reason"),
    "swiftsam_batches_total": ("counter", "batches the model thread ran"),
    "swiftsam_encoder_calls_total": ("counter", "image encoder calls (one per batch of new images)"),
    "swiftsam_encoder_images_total": ("counter", "images encoded"),
    "swiftsam_decoder_calls_total": ("counter", "prompt decoder calls"),
    "swiftsam_decoder_prompts_total": ("counter", "prompts decoded"),
    "swiftsam_cache_hits_total": ("counter", "embedding cache hits"),
    "swiftsam_cache_misses_total": ("counter", "embedding cache misses"),
    "swiftsam_cache_bytes": ("gauge", "bytes held by the embedding cache"),
    "swiftsam_cache_entries": ("gauge", "images in the embedding cache"),
    "swiftsam_queue_depth": ("gauge", "requests waiting for the model"),
}


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, esc)) + "}"


class Metrics:
    """Counters and latency histograms, thread-safe; gauges are read when rendered (``gauges``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self._hist: dict[tuple, list] = {}
        self.gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self._counters[name][tuple(sorted(labels.items()))] += value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            counts, total = self._hist.setdefault(key, [[0] * len(BUCKETS), [0.0, 0]])
            for i, b in enumerate(BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            total[0] += seconds
            total[1] += 1

    def render(self) -> str:
        lines = []
        with self._lock:
            counters = {k: dict(v) for k, v in self._counters.items()}
            hist = {k: ([*c], [*t]) for k, (c, t) in self._hist.items()}
        for name, (kind, text) in HELP.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if kind == "counter":
                for labels, value in sorted(counters.get(name, {}).items()):
                    lines.append(f"{name}{_labels(dict(labels))} {value:g}")
            elif kind == "gauge" and name in self.gauges:
                lines.append(f"{name} {float(self.gauges[name]()):g}")
            elif kind == "histogram":
                for (hname, labels), (counts, (total, n)) in sorted(hist.items()):
                    if hname != name:
                        continue
                    for b, c in zip(BUCKETS, counts):
                        lines.append(f"{name}_bucket{_labels({**dict(labels), 'le': f'{b:g}'})} {c}")
                    lines.append(f"{name}_bucket{_labels({**dict(labels), 'le': '+Inf'})} {n}")
                    lines.append(f"{name}_sum{_labels(dict(labels))} {total:.6f}")
                    lines.append(f"{name}_count{_labels(dict(labels))} {n}")
        return "\n".join(lines) + "\n"

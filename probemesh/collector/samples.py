"""Which of a result's samples may become series: the catalog decides, once per result.

Ingest runs the filter on every result it applies, so each refused sample is
counted exactly once, whether or not its result ever becomes the latest one
that /metrics shows. The exporter and the other readers only see the kept
samples, stored with the result in MeshState.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from probemesh.catalog import PROBE_METRICS
from probemesh.v1 import mesh_pb2 as pb

Labels = tuple[tuple[str, str], ...]
KeptSample = tuple[str, Labels, float]

REASONS = ("invalid_sample", "duplicate_sample", "too_many_samples")
"""What the filter refuses: a name or labels the catalog does not admit (or a
non-finite value), a repeated name+labels, samples beyond the per-result cap."""

_LABEL_KEYS = {name: tuple(sorted(spec.labels)) for name, spec in PROBE_METRICS.items()}
_NO_SAMPLES: list[KeptSample] = []
_VERDICT_CACHE = 100_000  # bounded: hostile label values are not cached forever


class SampleFilter:
    """Keeps the samples the catalog admits and counts the others by reason."""

    def __init__(self, max_samples: int = 64) -> None:
        self.max_samples = max_samples
        self.rejected: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        # (name, labels) -> admitted by the catalog; the same few keys recur in every result
        self._verdicts: dict[tuple[str, Labels], bool] = {}

    def keep(self, samples: Sequence[pb.Sample]) -> list[KeptSample]:
        """The admitted (name, sorted label items, value) triples, in order.

        A repeated name+labels keeps its first value: a duplicate series would
        spoil the whole exposition. The returned list is never mutated later.
        """
        if not samples:
            return _NO_SAMPLES
        kept: list[KeptSample] = []
        seen: set[tuple[str, Labels]] = set()
        rejected = self.rejected
        verdicts = self._verdicts
        for sample in samples:
            name = sample.name
            keys = _LABEL_KEYS.get(name)
            value = sample.value
            if keys is None or not math.isfinite(value):
                rejected["invalid_sample"] += 1
                continue
            label_map = sample.labels
            if len(label_map) != len(keys):
                rejected["invalid_sample"] += 1
                continue
            if keys:
                # Label maps are slow to iterate; look up the catalog's keys instead.
                labels = tuple([(k, label_map[k]) for k in keys if k in label_map])
                if len(labels) != len(keys):
                    rejected["invalid_sample"] += 1
                    continue
            else:
                labels = ()
            key = (name, labels)
            ok = verdicts.get(key)
            if ok is None:
                ok = PROBE_METRICS[name].labels_ok(dict(labels))
                if len(verdicts) < _VERDICT_CACHE:
                    verdicts[key] = ok
            if not ok:
                rejected["invalid_sample"] += 1
                continue
            if key in seen:
                rejected["duplicate_sample"] += 1
                continue
            if len(kept) >= self.max_samples:
                rejected["too_many_samples"] += 1
                continue
            seen.add(key)
            kept.append((name, labels, value))
        return kept

"""Which of a result's samples may become series: the catalog decides, once per result.

Ingest runs the filter on every result it applies, so each refused sample is
counted exactly once, whether or not its result ever becomes the latest one
that /metrics shows. The exporter and the other readers only see the kept
samples, stored with the result in MeshState.

The filter runs for every result at full ingest rate, and the collector holds
one result's samples per check x agent, so its output is shaped for memory and
the garbage collector as much as for speed: a result's kept samples are one
pair of its series keys, a tuple shared by every result of the same shape
(names and label tuples are cached objects too), and its values packed as
doubles in one bytes object (8 bytes a value instead of a float object and a
tuple of three: about 1.4 KB less per HTTP check x agent). Neither is tracked
by the garbage collector (CPython untracks a tuple that holds only untracked
objects within its first young-generation passes; bytes never are, unlike an
``array``), so the results ingest holds (a group awaiting commit, every
pair's latest) add nothing to the cost of a full collection.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

from probemesh.catalog import PROBE_METRICS
from probemesh.collector import sample_templates
from probemesh.v1 import mesh_pb2 as pb

Labels = tuple[tuple[str, str], ...]
KeptSample = tuple[str, Labels, float]
SeriesKey = tuple[str, Labels]
KeptSamples = tuple[tuple[SeriesKey, ...], bytes]
"""(series keys, values as native doubles): the i-th value is the i-th key's;
read them with sample_items or ``memoryview(values).cast("d")``."""

REASONS = ("invalid_sample", "duplicate_sample", "too_many_samples")
"""What the filter refuses: a name or labels the catalog does not admit (or a
non-finite value), a repeated name+labels, samples beyond the per-result cap."""

_LABEL_KEYS = {name: tuple(sorted(spec.labels)) for name, spec in PROBE_METRICS.items()}
# A name without labels is admitted by its name alone: its key is built once.
_PLAIN: dict[str, SeriesKey] = {name: (name, ()) for name, keys in _LABEL_KEYS.items() if not keys}
NO_SAMPLES: KeptSamples = ((), b"")
_UNSEEN = object()
_VERDICT_CACHE = 100_000  # bounded: hostile label values are not cached forever
_SHAPE_CACHE = 10_000
_TEMPLATE_CHECKS = 10_000  # checks with templates, at most
_isfinite = math.isfinite
_PACKERS = [struct.Struct(f"{n}d") for n in range(65)]  # by count; the cap is 64 by default


def pack(values: list[float]) -> bytes:
    """values as native doubles."""
    n = len(values)
    return (_PACKERS[n] if n < len(_PACKERS) else struct.Struct(f"{n}d")).pack(*values)


class SampleFilter:
    """Keeps the samples the catalog admits and counts the others by reason."""

    def __init__(self, max_samples: int = 64) -> None:
        self.max_samples = max_samples
        self.rejected: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        # (name, label values in the catalog's key order) -> the series key, or
        # None when the catalog refuses it; the same few keys recur in every result.
        self._verdicts: dict[tuple[str | None, ...], SeriesKey | None] = {}
        # A result's shape -> its series keys, for shapes whose every sample was admitted.
        self._shapes: dict[tuple[str | int | None, ...], tuple[SeriesKey, ...]] = {}
        # check -> encodings of wholly admitted samples, newest first (sample_templates.py)
        self._templates: dict[str, list[sample_templates.Template]] = {}
        self._misses: Counter[str] = Counter()  # by check, once its templates are all taken

    def keep_result(self, result: pb.Result, check: str, revision: int) -> KeptSamples:
        """keep(result.samples), first tried on the result's encoding (ingest's hot path).

        revision is the result's revision as received. A result whose samples
        are encoded exactly as those of an earlier, wholly admitted result of
        the check is admitted by matching its bytes; any other is judged by keep().
        """
        samples = result.samples
        count = len(samples)
        if not count:
            return NO_SAMPLES
        templates = self._templates.get(check)
        encoded = b""
        if templates:
            encoded = result.SerializeToString()
            end = len(encoded) - sample_templates.tail_size(
                len(result.http_phase_seconds), revision
            )
            for template in templates:
                if template.count != count or len(template.series) > self.max_samples:
                    continue
                values = template.values(encoded, end)
                if values is not None and all(map(_isfinite, memoryview(values).cast("d"))):
                    return template.series, values
        kept = self.keep(samples)
        if len(kept[0]) == count and sample_templates.USABLE:
            # Learning costs tens of microseconds (a regular expression is
            # compiled): a check whose results come in more encodings than it
            # keeps templates for replaces one only now and then.
            if templates is not None and len(templates) >= sample_templates.PER_CHECK:
                self._misses[check] += 1
                if self._misses[check] % sample_templates.RELEARN_EVERY:
                    return kept
            self._learn(result, check, revision, kept[0], encoded)
        return kept

    def _learn(
        self,
        result: pb.Result,
        check: str,
        revision: int,
        series: tuple[SeriesKey, ...],
        encoded: bytes,
    ) -> None:
        """Keep the encoding of a wholly admitted result's samples, if it matches itself."""
        template = sample_templates.learn(list(result.samples), series)
        if template is None:
            return
        encoded = encoded or result.SerializeToString()
        end = len(encoded) - sample_templates.tail_size(len(result.http_phase_seconds), revision)
        if template.values(encoded, end) is None:
            return
        templates = self._templates.get(check)
        if templates is None:
            if len(self._templates) >= _TEMPLATE_CHECKS:
                return
            templates = self._templates[check] = []
        templates.insert(0, template)
        del templates[sample_templates.PER_CHECK :]

    def keep(self, samples: Sequence[pb.Sample]) -> KeptSamples:
        """The admitted samples, in order: ((name, sorted label items) keys, values).

        A repeated name+labels keeps its first value: a duplicate series would
        spoil the whole exposition.

        A check's results carry the same samples every time, only the values
        change: a result whose shape (names and label values, in order) was
        wholly admitted before is admitted again by one lookup, and only its
        values are checked. Any other result is judged sample by sample.
        """
        if not samples:
            return NO_SAMPLES
        shape: list[str | int | None] = []
        add = shape.append
        values: list[float] = []
        for sample in samples:
            name = sample.name
            label_map = sample.labels
            count = len(label_map)
            add(name)
            add(count)
            if count:
                keys = _LABEL_KEYS.get(name)
                if keys is None or len(keys) != count:
                    return self._judge(samples)  # refused whatever was seen before
                if count == 1:  # the common case (an HTTP phase): no list to build
                    add(label_map.get(keys[0]))
                else:
                    get = label_map.get
                    shape.extend([get(key) for key in keys])
            values.append(sample.value)
        key = tuple(shape)
        series = self._shapes.get(key)
        if series is not None and len(series) <= self.max_samples and all(map(_isfinite, values)):
            return series, pack(values)
        kept = self._judge(samples)
        if len(kept[0]) == len(samples) and len(self._shapes) < _SHAPE_CACHE:
            self._shapes[key] = kept[0]
        return kept

    def _judge(self, samples: Sequence[pb.Sample]) -> KeptSamples:
        """keep(), one sample at a time, counting every refusal."""
        kept: list[SeriesKey] = []
        values: list[float] = []
        seen: set[SeriesKey] = set()
        rejected = self.rejected
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
            series = _PLAIN[name] if not keys else self._series(name, keys, label_map)
            if series is None:
                rejected["invalid_sample"] += 1
                continue
            if series in seen:
                rejected["duplicate_sample"] += 1
                continue
            if len(kept) >= self.max_samples:
                rejected["too_many_samples"] += 1
                continue
            seen.add(series)
            kept.append(series)
            values.append(value)
        return tuple(kept), pack(values)

    def _series(
        self, name: str, keys: tuple[str, ...], label_map: Mapping[str, str]
    ) -> SeriesKey | None:
        """The cached series key of a labelled sample, or None if the catalog refuses it.

        The label map holds exactly len(keys) entries; a key it lacks refuses the sample.
        Label maps are slow to iterate, so the catalog's keys are looked up instead.
        """
        get = label_map.get
        lookup = (name, *[get(k) for k in keys])
        cached = self._verdicts.get(lookup, _UNSEEN)
        if cached is not _UNSEEN:
            return cached  # type: ignore[return-value]
        if None in lookup:
            return None  # a key the catalog wants is missing; not worth caching
        labels = tuple([(k, str(v)) for k, v in zip(keys, lookup[1:], strict=True)])
        series: SeriesKey | None = (name, labels)
        if not PROBE_METRICS[name].labels_ok(dict(labels)):
            series = None
        if len(self._verdicts) < _VERDICT_CACHE:
            self._verdicts[lookup] = series
        return series


def sample_items(kept: KeptSamples) -> Iterator[KeptSample]:
    """(name, labels, value) of each kept sample, in order."""
    keys, values = kept
    for (name, labels), value in zip(keys, memoryview(values).cast("d"), strict=True):
        yield name, labels, value

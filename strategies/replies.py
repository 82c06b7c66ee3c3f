"""Checking client replies against the global adapter before they reach Flower's aggregation.

Flower's FedAvg raises ``InconsistentMessageReplies`` as soon as one reply's keys differ from the others and
averages NaNs or wrongly shaped tensors without complaint. Offsite-tuning clients train on hardware and data
the server never sees, so every reply is checked and a bad one is dropped with a reason instead.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message

from strategies import wire

_REASON_LIMIT = 300
# Ray's errors for a ClientApp process that exited or was killed mid-message (simulation); the reason text
# alone would say "unavailable" or "socket closed".
_PROCESS_DIED = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "WorkerCrashedError")


@dataclass(frozen=True)
class AdapterSpec:
    """What a valid adapter looks like: per key, the dtype (numpy name) and shape of the global adapter."""

    dtypes: Mapping[str, str]
    shapes: Mapping[str, tuple[int, ...]]

    @classmethod
    def of(cls, arrays: ArrayRecord) -> AdapterSpec:
        return cls(
            dtypes={k: str(a.dtype) for k, a in arrays.items()},
            shapes={k: tuple(a.shape) for k, a in arrays.items()},
        )

    def cast(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` with every array in the spec's dtype (server optimisers such as FedAdam return fp64)."""
        if all(str(a.dtype) == self.dtypes[k] for k, a in arrays.items()):
            return arrays
        return ArrayRecord(
            {k: Array(np.ascontiguousarray(a.numpy(), dtype=self.dtypes[k])) for k, a in arrays.items()}
        )


def reply_problem(
    msg: Message, spec: AdapterSpec, arrayrecord_key: str = wire.ARRAYS, weight_key: str = wire.NUM_EXAMPLES
) -> str | None:
    """Why ``msg`` cannot be aggregated, or None if it can.

    A valid reply carries no error, exactly one ArrayRecord (under ``arrayrecord_key``) with the spec's keys,
    dtypes and shapes and only finite values, and exactly one MetricRecord whose ``weight_key`` is a positive
    finite scalar and whose other values are finite.
    """
    if msg.has_error():
        reason = msg.error.reason or ""
        died = next((name for name in _PROCESS_DIED if name in reason), None)
        what = f"client process died ({died})" if died else f"client error (code {msg.error.code})"
        return f"{what}: {last_line(reason)}"
    content = msg.content
    if list(content.array_records) != [arrayrecord_key]:
        return f"expected one ArrayRecord {arrayrecord_key!r}, got {sorted(content.array_records)}"
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {sorted(content.metric_records)}"
    problem = _metrics_problem(next(iter(content.metric_records.values())), weight_key)
    return problem or _arrays_problem(content[arrayrecord_key], spec)


def majority_metric_keys(replies: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """Split valid replies into those whose metric keys match the most common key set, and the rest.

    Flower's aggregation requires every reply to carry the same metric keys; ties go to the first seen.
    """
    if not replies:
        return [], []
    key_sets = [frozenset(next(iter(m.content.metric_records.values())).keys()) for m in replies]
    majority = Counter(key_sets).most_common(1)[0][0]
    keep = [m for m, ks in zip(replies, key_sets, strict=True) if ks == majority]
    drop = [m for m, ks in zip(replies, key_sets, strict=True) if ks != majority]
    return keep, drop


def _metrics_problem(metrics: Mapping[str, object], weight_key: str) -> str | None:
    weight = metrics.get(weight_key)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        return f"metric {weight_key!r} must be a number, got {weight!r}"
    if not math.isfinite(weight) or weight <= 0:
        return f"metric {weight_key!r} must be positive and finite, got {weight!r}"
    for name, value in metrics.items():
        values = value if isinstance(value, list) else [value]
        if not all(math.isfinite(v) for v in values):
            return f"metric {name!r} is not finite: {value!r}"
    return None


def _arrays_problem(arrays: ArrayRecord, spec: AdapterSpec) -> str | None:
    missing = sorted(set(spec.shapes) - set(arrays))
    unexpected = sorted(set(arrays) - set(spec.shapes))
    if missing or unexpected:
        return f"adapter keys differ: missing {_abbrev(missing)}, unexpected {_abbrev(unexpected)}"
    for name, array in arrays.items():
        if str(array.dtype) != spec.dtypes[name]:
            return f"{name}: dtype {array.dtype}, expected {spec.dtypes[name]}"
        if tuple(array.shape) != spec.shapes[name]:
            return f"{name}: shape {tuple(array.shape)}, expected {spec.shapes[name]}"
        if not np.isfinite(array.numpy()).all():
            return f"{name}: contains NaN or inf"
    return None


def last_line(text: str | None) -> str:
    """The last non-empty line of ``text``, shortened: what a logged reason needs."""
    # ClientApp errors carry a whole traceback; its last line names the exception.
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    # Flower's simulation wraps it as "<class '...'>:<'message'>".
    line = lines[-1].removesuffix("'>") if lines else "(no reason given)"
    return line if len(line) <= _REASON_LIMIT else line[: _REASON_LIMIT - 1] + "…"


def _abbrev(items: list[str], limit: int = 4) -> str:
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + more + "]"

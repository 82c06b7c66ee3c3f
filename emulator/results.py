"""Evaluation results, torch-free: the typed row every consumer reads (round records, metrics.json,
report.md, the comparison, the studies), the names of the rows, the privacy gap and the paired difference
of two methods."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

# The measures of a results row, in the order rows and metric names list them (``plug_in_acc`` etc.).
MEASURES = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
PER_EXAMPLE = ("correct", "correct_norm", "predicted")

# The results rows (Offsite-Tuning's Table 1), one name each wherever a row is named in data: metrics.json's
# and state.json's results, the server's metric names (``plug_in_acc``: ``strategies.wire``), the round
# records' fields, the comparison's and the studies' columns, ``scaleot eval --row``. ``ROW_LABELS`` is how
# reports, logs and plots show them to people.
FULL_ZS = "full_zs"  # the full model, zero-shot
EMULATOR_ZS = "emulator_zs"  # the emulator, zero-shot
EMULATOR_FT = "emulator_ft"  # the emulator with the fine-tuned (global) adapter: what the data owners hold
PLUG_IN = "plug_in"  # the full model with the fine-tuned adapter plugged in: what the model owner gets
ROWS = (FULL_ZS, EMULATOR_ZS, EMULATOR_FT, PLUG_IN)
ROW_LABELS = {FULL_ZS: "Full-ZS", EMULATOR_ZS: "Emulator-ZS", EMULATOR_FT: "Emulator-FT", PLUG_IN: "Plug-in"}


@dataclass(frozen=True)
class MCResult:
    """Multiple-choice accuracy of one model on one list of examples.

    Attributes:
        acc: fraction of examples whose correct choice has the highest log-likelihood.
        acc_norm: the same with log-likelihoods divided by ``emulator.evaluation.scoring.choice_length``
            (lm-eval's).
        acc_stderr, acc_norm_stderr: standard errors of the two means.
        n: number of examples.
        correct, correct_norm: per-example 1/0, in the order of the examples given.
        predicted: per-example index of the choice ``acc`` picked (see ``choice_spread``).
    """

    acc: float
    acc_norm: float
    acc_stderr: float
    acc_norm_stderr: float
    n: int
    correct: tuple[int, ...]
    correct_norm: tuple[int, ...]
    predicted: tuple[int, ...] = ()

    def measures(self) -> dict[str, Any]:
        """``{acc, acc_stderr, acc_norm, acc_norm_stderr, n}``, JSON-friendly (state.json zero-shot rows)."""
        return {m: float(getattr(self, m)) for m in MEASURES} | {"n": self.n}

    def to_row(self) -> dict[str, Any]:
        """metrics.json's results row: ``measures()``, the per-example lists where known (for paired
        comparisons) and how the predictions spread over choice positions (``choice_spread``)."""
        known = {k: list(getattr(self, k)) for k in PER_EXAMPLE if getattr(self, k)}
        return self.measures() | known | choice_spread(self.predicted)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> MCResult:
        """Read a row written by ``measures`` or ``to_row`` (per-example lists absent: empty)."""
        lists = {k: tuple(int(v) for v in row.get(k, ())) for k in PER_EXAMPLE}
        return cls(**{m: float(row[m]) for m in MEASURES}, n=int(row["n"]), **lists)

    def to_metrics(self, row: str) -> dict[str, float]:
        """The measures as flat metrics named after ``row`` (``plug_in_acc``, ...; ``n`` left out), as the
        server evaluation hands them to the strategy; ``from_metrics`` reads them back."""
        return {f"{row}_{m}": v for m, v in self.measures().items() if m != "n"}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float], row: str, n: int) -> MCResult | None:
        """Row ``row`` of flat metrics written by ``to_metrics`` (None when they hold none of it), scored on
        ``n`` examples."""
        if f"{row}_acc" not in metrics:
            return None
        return cls.from_row({m: metrics[f"{row}_{m}"] for m in MEASURES} | {"n": n})

    def with_per_example(self, per_example: Mapping[str, Sequence[int]] | None) -> MCResult:
        """This result with the per-example lists in ``per_example`` (``correct`` etc.) filled in."""
        known = {k: tuple(per_example[k]) for k in PER_EXAMPLE if k in (per_example or {})}
        return replace(self, **known)


# A row in which one choice position takes more than this share of the predictions is flagged: a model giving
# one answer to everything (e.g. after training on clients each holding one answer position) is not a model
# that learned the task, whatever its accuracy.
ONE_ANSWER_SHARE = 0.9


def choice_spread(predicted: Sequence[int]) -> dict[str, Any]:
    """How predictions spread over choice positions, and whether one position takes nearly all of them.

    Args:
        predicted: per-example index of the picked choice (``MCResult.predicted``).

    Returns:
        ``choice_spread`` (share of predictions at positions 0, 1, ..., up to the highest picked),
        ``top_choice`` (the most picked position), ``top_choice_share`` (its share) and ``one_answer``
        (``top_choice_share > ONE_ANSWER_SHARE``); empty when there are no predictions.
    """
    if not predicted:
        return {}
    counts = [0] * (max(predicted) + 1)
    for index in predicted:
        counts[index] += 1
    spread = [c / len(predicted) for c in counts]
    top = max(range(len(spread)), key=spread.__getitem__)
    return {
        "choice_spread": spread,
        "top_choice": top,
        "top_choice_share": spread[top],
        "one_answer": spread[top] > ONE_ANSWER_SHARE,
    }


def one_answer_note(name: str, row: Mapping[str, Any]) -> str | None:
    """The one-line flag of a row whose predictions collapse onto one position (None if they do not)."""
    if not row.get("one_answer"):
        return None
    return (
        f"{name} picks choice {row['top_choice']} for {100 * row['top_choice_share']:.0f} % of the test "
        "examples: one answer to everything, not a learned task"
    )


Accuracy = MCResult | Mapping[str, Any] | float | None


def privacy_gap(plug_in: Accuracy, emulator_ft: Accuracy) -> float | None:
    """Δ = plug-in accuracy − emulator fine-tuned accuracy (Offsite-Tuning's privacy
    measure; larger is more private), a fraction.

    Args:
        plug_in, emulator_ft: accuracies, ``MCResult``s, or results rows read from JSON holding ``acc``.

    Returns:
        The difference, or None when either is missing.
    """
    if plug_in is None or emulator_ft is None:
        return None
    return _acc(plug_in) - _acc(emulator_ft)


def _acc(value: MCResult | Mapping[str, Any] | float) -> float:
    if isinstance(value, MCResult):
        return value.acc
    return value["acc"] if isinstance(value, Mapping) else value


def paired_difference(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[float, float]:
    """Mean of ``a - b`` over the same examples and its standard error (paired: shared difficulty cancels).

    Args:
        a, b: per-example scores (e.g. ``MCResult.correct``) of two methods on the same examples.

    Returns:
        ``(mean difference, standard error)``; the error is ``stdev(a - b) / sqrt(n)``, NaN for n < 2.

    Raises:
        ValueError: the two have different lengths or are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError(
            f"a has {len(a)} and b has {len(b)} entries; need the same non-zero number of examples"
        )
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan")
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, math.sqrt(variance / n)

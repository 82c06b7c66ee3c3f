"""One record per federated round: what the strategy saw and what the server-side evaluation measured."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from emulator.results import privacy_gap
from strategies import wire


@dataclass
class RoundRecord:
    """What happened in one round. Accuracies are None where not evaluated; bytes are ArrayRecord bytes."""

    round: int
    train_loss: float | None = None
    plug_in_acc: float | None = None
    plug_in_acc_stderr: float | None = None
    emulator_ft_acc: float | None = None
    emulator_ft_acc_stderr: float | None = None
    privacy_gap: float | None = None  # plug-in − emulator FT (Offsite-Tuning's measure); larger: more private
    sampled: int = 0
    replied: int = 0
    rejected: int = 0
    missing: int = 0  # sampled nodes whose reply did not come within the round timeout
    aggregated: int = 0
    empty: bool = False  # no reply was aggregated: the global adapter did not change in this round
    sampled_partitions: list[int] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)  # "node N: why", for dropped, missing, refused
    bytes_sent: int = 0
    bytes_received: int = 0
    bytes_per_client: int = 0  # what each sampled client received
    harmonizer_bytes: int = 0  # of bytes_per_client: the re-aligned harmonizers sent with the adapter
    seconds: float = 0.0  # wall time of the round: handshakes, client training, aggregation, evaluation
    eval_seconds: float = 0.0  # of which server-side evaluation
    client_metrics: dict[str, float] = field(default_factory=dict)  # clients' metrics, weighted by examples
    evaluation: dict[str, float] = field(default_factory=dict)
    # Differential privacy (strategies.privacy), empty without it: cumulative epsilon at delta after this
    # round's release, the clipping norm and the noise std (per adapter coordinate) of that release.
    privacy: dict[str, float | None] = field(default_factory=dict)
    workers: list[str] = field(default_factory=list)  # Ray nodes (or hosts) the aggregated clients ran on
    # Re-alignment after this round's aggregation (federation.realign_steps), empty without it: seconds,
    # steps, and the emulator-full hidden-state gap before and after (loss_before, loss_after).
    realign: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        return cls(**data)


class RunFailedError(RuntimeError):
    """A run that ended without a result it may report (nothing trained, nodes missing, backend crashed)."""


class RunStopped(RunFailedError):
    """A run stopped from outside (SIGTERM, SIGINT) while the ServerApp ran: not a failure of the run, whose
    directory stays resumable, so metrics.json does not record it as failed."""


def most_common_failure(records: Sequence[RoundRecord]) -> tuple[str, int, int] | None:
    """The clients' most common failure over ``records``: (an example reason, its count, all failures).

    Reasons are counted with their numbers (node and partition ids, seconds) masked, so "partition 0 fails"
    and "partition 3 fails" are one failure; None when no client failed.
    """
    reasons = [r.split(": ", 1)[-1] for record in records for r in record.rejections]
    if not reasons:
        return None
    counts = Counter(re.sub(r"\d+", "N", r) for r in reasons)
    masked, count = counts.most_common(1)[0]
    example = next(r for r in reasons if re.sub(r"\d+", "N", r) == masked)
    return example, count, len(reasons)


def nothing_trained_reason(records: Sequence[RoundRecord]) -> str:
    """One line saying that no round aggregated a reply, and the clients' most common failure."""
    head = f"no client reply was aggregated in any of the {len(records)} round(s), so nothing was trained"
    failure = most_common_failure(records)
    if failure is None:
        return f"{head}; no client was sampled (did any node connect and load the emulator?)"
    example, count, total = failure
    return f"{head}; most common client failure ({count} of {total}): {example}"


def fill_accuracies(record: RoundRecord, metrics: Mapping[str, float]) -> None:
    """Copy the evaluation metrics into ``record`` and derive the privacy gap."""
    record.evaluation = {k: float(v) for k, v in metrics.items()}
    record.plug_in_acc = metrics.get(wire.PLUG_IN_ACC)
    record.plug_in_acc_stderr = metrics.get(wire.PLUG_IN_ACC_STDERR)
    record.emulator_ft_acc = metrics.get(wire.EMULATOR_FT_ACC)
    record.emulator_ft_acc_stderr = metrics.get(wire.EMULATOR_FT_ACC_STDERR)
    record.privacy_gap = privacy_gap(record.plug_in_acc, record.emulator_ft_acc)


def progress_line(record: RoundRecord, last_round: int) -> str:
    """The one log line per round: loss, accuracies (%), clients, time."""

    def pct(x: float | None) -> str:
        return "  –  " if x is None else f"{100 * x:5.1f}"

    loss = "–" if record.train_loss is None else f"{record.train_loss:.4f}"
    if record.empty:
        failure = most_common_failure([record])
        why = f": {failure[0]}" if failure else ""
        return (
            f"round {record.round}/{last_round}: NOTHING AGGREGATED, adapter unchanged; clients 0/"
            f"{record.sampled} ({record.rejected} dropped, {record.missing} no reply){why}, "
            f"{record.seconds:.1f} s"
        )
    epsilon = record.privacy.get("epsilon", "–")
    dp = f", ε {epsilon:.2f}" if isinstance(epsilon, float) else ""
    return (
        f"round {record.round}/{last_round}: loss {loss}, plug-in acc {pct(record.plug_in_acc)}, "
        f"emulator FT acc {pct(record.emulator_ft_acc)}, clients {record.aggregated}/{record.sampled} "
        f"({record.rejected} dropped, {record.missing} no reply){dp}, {record.seconds:.1f} s"
    )

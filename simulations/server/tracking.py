"""Optional experiment tracking: each round's metrics as TensorBoard scalars (``output.tensorboard = true``).

The FlowerTune LLM apps log to TensorBoard or W&B; TensorBoard event files need no account and no network.
They are written with tensorboardX (``pip install -e '.[tracking]'``), which needs neither TensorFlow nor the
``tensorboard`` package; ``tensorboard --logdir runs`` reads them. A resumed run appends a new event file.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from strategies.records import RoundRecord

log = logging.getLogger(__name__)

# RoundRecord fields logged as scalars, by tag; None values (not measured that round) are skipped.
_FIELDS = {
    "train/loss": "train_loss",
    "eval/plug_in_acc": "plug_in_acc",
    "eval/emulator_ft_acc": "emulator_ft_acc",
    "eval/privacy_gap": "privacy_gap",
    "clients/aggregated": "aggregated",
    "clients/rejected": "rejected",
    "comm/bytes_sent": "bytes_sent",
    "comm/bytes_received": "bytes_received",
    "time/round_seconds": "seconds",
    "time/eval_seconds": "eval_seconds",
}


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """Tag -> value of one round: the fields in ``_FIELDS``, every evaluation metric (``eval/...``), the
    clients' mean metrics (``clients/...``) and the re-alignment's numbers (``realign/...``, when on)."""
    scalars = {tag: getattr(record, name) for tag, name in _FIELDS.items()}
    scalars |= {f"eval/{k}": v for k, v in record.evaluation.items()}
    scalars |= {f"clients/{k}": v for k, v in record.client_metrics.items()}
    scalars |= {f"realign/{k}": v for k, v in record.realign.items()}
    return {tag: float(v) for tag, v in scalars.items() if v is not None}


class TensorBoardLog:
    """Writes round metrics into ``directory`` as TensorBoard event files, one step per round.

    Raises:
        ValueError: tensorboardX is not installed (checked here, before any model is loaded).
    """

    def __init__(self, directory: Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError as error:
            raise ValueError(
                "config output.tensorboard=true needs tensorboardX: pip install -e '.[tracking]'"
            ) from error
        self._writer = SummaryWriter(logdir=str(directory))
        log.info("TensorBoard event files in %s", directory)

    def round(self, record: RoundRecord) -> None:
        """Log one round and flush, so that a killed run keeps what it logged."""
        for tag, value in round_scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=record.round)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    @property
    def closed(self) -> bool:
        return self._writer.all_writers is None  # tensorboardX's own mark of a closed writer

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # a failed run (RunFailedError, a crashed backend) closes its event files too


def read_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """Tag -> {step: value} of every scalar in the event files under ``directory``, read without TensorBoard.

    Event files are TFRecord files: per record a little-endian uint64 length, its CRC, the ``Event`` protobuf
    (tensorboardX ships its compiled schema), and the protobuf's CRC; CRCs are not checked.
    """
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars

"""Experiment tracking: TensorBoard event files of each round's metrics (``output.tensorboard``)."""

from __future__ import annotations

import pytest

from strategies.records import RoundRecord

pytest.importorskip(
    "tensorboardX", reason="tensorboardX is not installed; pip install -e '.[dev]' installs it"
)

from simulations.server.tracking import TensorBoardLog, read_scalars  # noqa: E402


def test_tensorboard_log_writes_each_rounds_metrics(tmp_path):
    log = TensorBoardLog(tmp_path / "tb")
    log.round(RoundRecord(round=1, train_loss=2.5, aggregated=3, evaluation={"plug_in_acc": 0.25}))
    log.round(RoundRecord(round=2, train_loss=2.0, plug_in_acc=0.5, emulator_ft_acc=0.25, privacy_gap=0.25,
                          realign={"loss_before": 0.2, "loss_after": 0.15}))  # fmt: skip
    log.close()
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["train/loss"] == {1: 2.5, 2: 2.0}
    assert scalars["eval/plug_in_acc"] == {1: 0.25, 2: 0.5}  # round 1 from the evaluation dict
    assert scalars["eval/privacy_gap"] == {2: 0.25} and scalars["clients/aggregated"][1] == 3
    assert "eval/emulator_ft_acc" in scalars and 1 not in scalars["eval/emulator_ft_acc"]  # None: not logged
    assert scalars["realign/loss_after"] == {2: pytest.approx(0.15)}  # re-alignment off in round 1: nothing


def test_tensorboard_log_is_closed_when_the_run_fails_inside_it(tmp_path):
    # run_federation holds the log in a `with`: a RunFailedError (nothing trained) still closes the writer.
    from strategies.records import RunFailedError

    with pytest.raises(RunFailedError), TensorBoardLog(tmp_path / "tb") as log:
        log.round(RoundRecord(round=1, train_loss=2.5))
        assert not log.closed
        raise RunFailedError("nothing was trained")
    assert log.closed and read_scalars(tmp_path / "tb")["train/loss"] == {1: 2.5}

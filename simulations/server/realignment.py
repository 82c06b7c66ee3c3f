"""The model owner's re-alignment between rounds (``federation.realign_steps``), handed to the strategy.

FedBiOT's step (``emulator.scaleot.realign``) on the server's own models: the new global adapter is plugged
into the full model and into the server's emulator (the evaluator's, so its emulator fine-tuned row is
scored on the re-aligned emulator), then the emulator's harmonizers are trained toward the full model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from flwr.app import ArrayRecord

from emulator.scaleot.blocks import LayerEntry
from emulator.scaleot.realign import load_harmonizer_state_, realign_
from emulator.tuning.adapters import load_adapter_state_, prepare_adapter_
from emulator.tuning.plug_in import plug_in_
from simulations.server.evaluation import ServerEvaluator


class ServerRealigner:
    """``(round, global adapter) -> (harmonizers, numbers)``, the strategy's ``realign`` callable.

    Args:
        evaluator: holds the full model and the emulator (both changed in place: adapters plugged in, the
            emulator's harmonizers trained).
        layer_map: the emulator's layer map (``Emulator.layer_map``).
        blocks: (N, T) public token blocks (``emulator.data.corpus.public_blocks``).
        steps, lr: ``federation.realign_steps`` and ``federation.realign_lr``.
        batch_size: public blocks per step (``emulator.batch_size``, as stage 1).
        seed: run seed; round r's batches are drawn with ``seed * 100_003 + r``, so a resumed run draws what
            an uninterrupted one would.
    """

    def __init__(
        self,
        evaluator: ServerEvaluator,
        layer_map: Sequence[LayerEntry],
        blocks: torch.Tensor,
        steps: int,
        lr: float,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        self.evaluator, self.layer_map, self.blocks = evaluator, list(layer_map), blocks
        self.steps, self.lr, self.batch_size, self.seed = steps, lr, batch_size, seed

    def __call__(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict[str, float]]:
        """Re-align with ``arrays`` plugged in; returns the harmonizer tensors and the record's numbers."""
        ev, state = self.evaluator, arrays.to_torch_state_dict()
        plug_in_(ev.full_model, state, sorted(ev.positions), ev.adapter)
        prepare_adapter_(ev.emulator_model, ev.positions, ev.adapter)
        load_adapter_state_(ev.emulator_model, ev.positions, state)
        result = realign_(
            ev.emulator_model,
            ev.full_model,
            self.layer_map,
            self.blocks,
            self.steps,
            self.lr,
            self.batch_size,
            seed=self.seed * 100_003 + server_round,
        )
        numbers = {"loss_before": result.loss_before, "loss_after": result.loss_after, "steps": result.steps}
        return ArrayRecord(result.state), numbers

    def load_(self, harmonizers: ArrayRecord) -> None:
        """Put checkpointed harmonizers back into the server's emulator (resume).

        Raises:
            ValueError: they do not fit the emulator's harmonizers.
        """
        load_harmonizer_state_(
            self.evaluator.emulator_model, self.layer_map, harmonizers.to_torch_state_dict()
        )

"""Emulator distillation (Offsite-Tuning's "distill" emulators), for the ``uniform+distill`` baseline.

Offsite-Tuning (Xiao et al., 2023, ``offsite_tuning/utils.py``): the kept middle blocks (the student) are
trained so that their output matches the output of the original middle (the teacher) given the same input, the
hidden state leaving the bottom adapter, with the normalised MSE ``mean(((h_T − h_S) / sqrt(mean(h_T²)))²)``,
plus an optional LM loss (the paper's weights: LM 1, KD 30; here KD has weight 1 and ``distill_lm_weight``
scales the LM term).

Ours: both hidden states are taken with forward hooks during each model's own forward pass. The emulator's
bottom blocks are untouched copies of the full model's, so the student's input equals the teacher's. Constant
learning rate, AdamW without weight decay, model in eval mode (no dropout).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from emulator.config import EmulatorConfig
from emulator.data.corpus import public_batches
from emulator.lm.architectures import backbone, get_layers
from emulator.lm.surgery import capture_blocks, lm_loss
from emulator.scaleot.blocks import normalized_mse

log = logging.getLogger(__name__)


def distill_middle_(
    emulator_model: nn.Module,
    teacher: nn.Module,
    student_positions: Sequence[int],
    teacher_last: int,
    blocks: torch.Tensor,
    config: EmulatorConfig,
    progress: bool = True,
) -> list[float]:
    """Train the emulator's kept middle blocks to reproduce the original middle's output, in place.

    Args:
        emulator_model: the emulator; only the blocks at ``student_positions`` are updated, then frozen again.
        teacher: the full model (or a frozen view of it); not modified.
        student_positions: emulator positions of the kept middle blocks, in order.
        teacher_last: original index of the teacher's last middle block.
        blocks: (N, T) public token blocks.
        config: ``distill_steps``, ``distill_lr``, ``distill_lm_weight``, ``batch_size``, ``seed``,
            ``log_every``.
        progress: log progress at INFO (else DEBUG).

    Returns:
        The loss per step.
    """
    student_layers = get_layers(emulator_model)
    params = [p for position in student_positions for p in student_layers[position].parameters()]
    if not params:
        log.info("distillation skipped: the emulator keeps no middle block")
        return []
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.distill.distill_lr, weight_decay=0.0)
    batches = public_batches(blocks, config.data.batch_size, torch.Generator().manual_seed(config.data.seed))
    device = params[0].device
    level = logging.INFO if progress else logging.DEBUG
    curve: list[float] = []
    for step in range(1, config.distill.distill_steps + 1):
        loss = _distill_loss(
            emulator_model, teacher, student_positions[-1], teacher_last, next(batches).to(device), config
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(loss.item())
        if step % config.log_every == 0 or step == config.distill.distill_steps:
            log.log(
                level, "distillation step %d/%d: loss %.4f", step, config.distill.distill_steps, curve[-1]
            )
    for p in params:
        p.requires_grad_(False)
    return curve


def _distill_loss(
    emulator_model: nn.Module,
    teacher: nn.Module,
    student_last: int,
    teacher_last: int,
    batch: torch.Tensor,
    config: EmulatorConfig,
) -> torch.Tensor:
    weight = config.distill.distill_lm_weight
    return middle_gap(emulator_model, teacher, student_last, teacher_last, batch, "global", weight)


def middle_gap(
    emulator_model: nn.Module,
    full_model: nn.Module,
    emulator_last: int,
    full_last: int,
    batch: torch.Tensor,
    norm: str,
    lm_weight: float = 0.0,
) -> torch.Tensor:
    """``normalized_mse`` between the hidden states leaving the two middles on one batch, each taken during
    its model's own forward, plus ``lm_weight`` × the emulator's LM loss on the batch.

    Args:
        emulator_last, full_last: the last middle block's position in each model's layer list.
        batch: (B, T) token ids.
        norm: ``global`` (Offsite-Tuning's distillation), ``token`` or ``dimension``.

    Returns:
        A scalar with gradients to the emulator's trainable parameters (none to the full model).
    """
    with torch.no_grad(), capture_blocks(get_layers(full_model), [full_last], inputs=False) as target:
        backbone(full_model)(input_ids=batch, use_cache=False)
    with capture_blocks(get_layers(emulator_model), [emulator_last], inputs=False) as student:
        if lm_weight > 0:
            lm = lm_loss(emulator_model, batch)
        else:
            backbone(emulator_model)(input_ids=batch, use_cache=False)
            lm = torch.zeros((), device=batch.device)
    gap = normalized_mse(student.outputs[emulator_last], target.outputs[full_last], norm)  # (B, T, d) -> ()
    return gap + lm_weight * lm

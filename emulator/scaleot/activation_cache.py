"""Stage 1 from cached activations (ours, issue 21 §1): the full model's middle hidden states on the public
corpus, computed once, and the least-squares start of each harmonizer.

The ``local`` harmonizer loss regresses each block's output from its input, both taken from the full model,
so it needs the full model's forward only to produce those states, and the same states serve every step,
every harmonizer and every later emulator of the same model and corpus (another α, another seed of the
policy). ``middle_states`` runs that forward once over ``K`` public token blocks and keeps the states in a
memory-mapped ``.npy`` file under ``<SCALEOT_CACHE>/activations``, keyed by the model's content, the blocks
and the middle; stage 1 then trains every harmonizer on slices of it (``cached_local_loss``) at the cost of
the harmonizers alone. ScaleOT (no code published) and Offsite-Tuning distil on live forwards instead.

``fit_least_squares_`` starts a harmonizer from the closed-form fit of its block: the rank-``r/2``
reduced-rank regression of the block's update ``y − x`` on ``RMSNorm(x)``, weighted as ``normalized_mse``
weights tokens, and written into the harmonizer's bottleneck with the identity ``act(z) − act(−z) = z``
(exact for ReLU, GELU and SiLU), so the harmonizer computes that linear map before its first gradient step.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emulator.assets import cache_root
from emulator.data.corpus import public_batches
from emulator.files import replacing
from emulator.lm.architectures import backbone, get_layers, hidden_size
from emulator.lm.models import model_fingerprint
from emulator.lm.surgery import capture_blocks
from emulator.scaleot.blocks import mean_square, normalized_mse
from emulator.scaleot.harmonizer import Harmonizer

log = logging.getLogger(__name__)

_FORMAT = 1  # bump when the file layout changes: old entries are then simply not found


def activation_dir() -> Path:
    """``<SCALEOT_CACHE>/activations``: one ``<key>.npy`` per model, block set and middle."""
    return cache_root() / "activations"


def middle_states(
    model: nn.Module, middle: list[int], blocks: torch.Tensor, batch_size: int, progress: bool = True
) -> np.ndarray:
    """The hidden states entering each middle block and leaving the last one, for every token block.

    Args:
        model: the full causal LM (not modified; run without gradient).
        middle: the middle blocks' indices, consecutive (``blocks.middle_blocks``).
        blocks: (K, T) ``torch.long`` public token blocks.
        batch_size: blocks per forward pass.
        progress: log the computation at INFO (else DEBUG).

    Returns:
        A read-only memory map of shape (K, M + 1, T, d), float32: ``[:, k]`` enters ``middle[k]``,
        ``[:, k + 1]`` leaves it. Computed once per model content, blocks and middle, then read from the
        cache.

    Raises:
        ValueError: ``middle`` is empty or not consecutive (a block's output must be the next one's input).
        FileWriteError: the cache entry cannot be written.
    """
    if not middle or middle != list(range(middle[0], middle[0] + len(middle))):
        raise ValueError(f"middle={middle} must be a non-empty run of consecutive block indices")
    digest = hashlib.sha256(f"{_FORMAT}|{model_fingerprint(model)}|{middle}|".encode())
    digest.update(blocks.to("cpu", torch.int64).contiguous().numpy().tobytes())
    path = activation_dir() / f"{digest.hexdigest()[:24]}.npy"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with replacing(path, keep_existing=True) as tmp:
            _write_states(model, middle, blocks, batch_size, tmp)
        log.log(
            logging.INFO if progress else logging.DEBUG,
            "stage 1: the full model's middle states on %d public blocks cached in %.0f s (%s, %.0f MB)",
            len(blocks),
            time.perf_counter() - start,
            path,
            path.stat().st_size / 2**20,
        )
    return np.load(path, mmap_mode="r")


@torch.no_grad()
def _write_states(
    model: nn.Module, middle: list[int], blocks: torch.Tensor, batch_size: int, path: Path
) -> None:
    layers, device = get_layers(model), next(model.parameters()).device
    width = hidden_size(model)
    with open(path, "wb") as handle:  # np.save's header, then the rows batch by batch: nothing held in memory
        header = {"descr": "<f4", "fortran_order": False, "shape": (len(blocks), len(middle) + 1,
                  blocks.shape[1], width)}  # fmt: skip
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start : start + batch_size].to(device)
            with capture_blocks(layers, middle) as record:
                backbone(model)(input_ids=batch, use_cache=False)
            states = [record.inputs[i] for i in middle] + [record.outputs[middle[-1]]]  # M + 1 × (B, T, d)
            handle.write(torch.stack(states, dim=1).float().cpu().contiguous().numpy().tobytes())


def state_batches(
    states: np.ndarray, batch_size: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> Iterator[torch.Tensor]:
    """Endless shuffled (batch_size, M + 1, T, d) batches of ``middle_states`` rows, read from the memory map,
    in the order ``emulator.data.corpus.public_batches`` gives the blocks they were computed from."""
    for rows in public_batches(torch.arange(len(states)), batch_size, generator):
        rows = np.sort(rows.numpy())  # ascending: sequential reads of the file
        yield torch.from_numpy(states[rows]).to(device=device, dtype=dtype)


def cached_local_loss(
    harmonizers: dict[int, Harmonizer], middle: list[int], states: torch.Tensor, norm: str
) -> torch.Tensor:
    """The ``local`` harmonizer loss of ``layer_replace`` on cached states: the mean over middle blocks of
    ``normalized_mse(harmonizer_i(x_i), y_i, norm)``.

    Args:
        states: (B, M + 1, T, d) rows of ``middle_states``, in the harmonizers' dtype and device.
    """
    losses = [
        normalized_mse(harmonizers[i](states[:, k]), states[:, k + 1], norm) for k, i in enumerate(middle)
    ]
    return torch.stack(losses).mean()


@torch.no_grad()
def fit_least_squares_(
    harmonizer: Harmonizer, inputs: torch.Tensor, outputs: torch.Tensor, norm: str, ridge: float = 1e-4
) -> None:
    """Set ``harmonizer`` (freshly made, RMSNorm weight 1) to the best linear map of its rank, in place.

    Fits ``y − x ≈ RMSNorm(x) · W + c`` by ridge regression (``ridge`` × the mean diagonal of the Gram
    matrix), each token weighted as ``normalized_mse(·, y, norm)`` weights it, keeps the ``rank // 2``
    directions of the fitted update that explain most of it (reduced-rank regression), and writes them as
    ``W_down = [A; −A]``, ``W_up = [V, −V]``, ``b_up = c`` so that ``up(act(down(n))) = n·A·Vᵀ + c``.

    Args:
        inputs, outputs: (N, d) hidden states entering and leaving the replaced block.
        norm: ``token``, ``dimension`` or ``global``, as ``Stage1Config.local_norm``.

    Raises:
        ValueError: the harmonizer's rank is below 2, or ``inputs`` and ``outputs`` differ in shape.
    """
    rank = harmonizer.down.out_features
    if rank < 2 or inputs.shape != outputs.shape:
        raise ValueError(
            f"least-squares start needs harmonizer rank >= 2 (got {rank}) and inputs {tuple(inputs.shape)} "
            f"shaped as outputs {tuple(outputs.shape)}"
        )
    x = harmonizer.norm(inputs.to(harmonizer.down.weight)).double()  # (N, d)
    y, target = (outputs - inputs).to(x), outputs.to(x)
    ones = {"dtype": x.dtype, "device": x.device}
    scale = (mean_square(target, norm) + 1e-6).rsqrt()  # (N, 1) by token, else (1, d) or ()
    row = scale if norm == "token" else torch.ones(len(y), 1, **ones)  # (N, 1)
    column = torch.ones(1, y.shape[1], **ones) * (1.0 if norm == "token" else scale)  # (1, d)
    weight = row.pow(2) / row.pow(2).sum()  # (N, 1): each token's share of the loss
    x_mean, y_mean = (weight * x).sum(0), (weight * y * column).sum(0)  # the intercept goes to up.bias
    design = (x - x_mean) * row  # (N, d)
    scaled = (y * column - y_mean) * row  # (N, d): the loss's own weighting
    # The two N × d products in float32 (centred, weighted values of order 1; half the time of float64), the
    # d × d algebra after them in float64.
    single = design.float()
    gram = (single.T @ single).double()
    ridged = gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), **ones)
    weights = torch.linalg.solve(ridged, (single.T @ scaled.float()).double())  # (d, d)
    _, vectors = torch.linalg.eigh(weights.T @ gram @ weights)  # of fittedᵀ·fitted, without the N × d product
    half = rank // 2
    keep = vectors[:, -half:]  # (d, k): the directions of the fitted update with most energy
    a = weights @ keep  # (d, k)
    up = keep / column.T  # (d, k): the loss's per-dimension weighting undone
    bias = (y_mean - x_mean @ a @ keep.T) / column[0]  # (d,)
    dtype = harmonizer.down.weight.dtype
    for module in (harmonizer.down, harmonizer.up):
        module.weight.zero_()
        module.bias.zero_()
    harmonizer.down.weight[:half] = a.T.to(dtype)
    harmonizer.down.weight[half : 2 * half] = -a.T.to(dtype)
    harmonizer.up.weight[:, :half] = up.to(dtype)
    harmonizer.up.weight[:, half : 2 * half] = -up.to(dtype)
    harmonizer.up.bias.copy_(bias.to(dtype))

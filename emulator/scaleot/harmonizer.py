"""Harmonizer (ScaleOT): a lightweight network that stands in for one decoder block of the emulator's middle.

Paper: harmonizers replace the least important middle blocks and keep the emulator "semantically consistent".
Reconstruction (ScaleOT published no code): a residual low-rank feed-forward ``h + W_up · act(W_down ·
norm(h))`` of rank r_h, one per middle block, with ``W_up`` and its bias zero-initialised so it starts as the
identity (a dropped block). The norm is a fresh RMSNorm for every family: SmolLM2's residual stream has a few
very large dimensions, and an un-normalised bottleneck would see little else.

The harmonizer is called exactly like a transformers-5 decoder layer, ``layer(hidden_states, *args,
**kwargs)`` returning a tensor, so it sits in the model's own layer list and the model's forward (masks,
rotary embeddings, caches) runs unchanged. The extra arguments (attention mask, position embeddings, cache,
...) are ignored: a harmonizer mixes no information across tokens. No family reads attributes off its layer
objects in transformers 5 (Qwen2 takes each layer's attention type from ``config.layer_types``), so nothing
else is needed.
"""

from __future__ import annotations

import torch
from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class Harmonizer(nn.Module):
    """Residual low-rank block ``h + W_up · act(W_down · RMSNorm(h))``, the identity at initialisation.

    Args:
        hidden_size: width d of the residual stream.
        rank: bottleneck width r_h.
        activation: ``relu``, ``gelu`` or ``silu``.
        eps: RMSNorm epsilon.

    Raises:
        ValueError: a non-positive size or an unknown activation.
    """

    def __init__(self, hidden_size: int, rank: int, activation: str = "relu", eps: float = 1e-6) -> None:
        super().__init__()
        if hidden_size < 1 or rank < 1:
            raise ValueError(f"harmonizer hidden_size={hidden_size} and rank={rank} must be >= 1")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"harmonizer activation={activation!r} is not allowed; use one of {sorted(_ACTIVATIONS)}"
            )
        self.norm = nn.RMSNorm(hidden_size, eps=eps)
        self.down = nn.Linear(hidden_size, rank)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(rank, hidden_size)
        nn.init.zeros_(self.up.weight)  # identity at start: the harmonizer begins as a dropped block
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """Apply the residual bottleneck; decoder-layer arguments other than ``hidden_states`` are ignored.

        Args:
            hidden_states: (B, T, d) residual stream entering the replaced block.

        Returns:
            (B, T, d) residual stream leaving it.
        """
        update = self.up(self.act(self.down(self.norm(hidden_states))))  # (B, T, d) -> (B, T, r) -> (B, T, d)
        return hidden_states + update


def make_harmonizers(
    indices: list[int],
    hidden_size: int,
    rank: int,
    activation: str = "relu",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[int, Harmonizer]:
    """One identity-initialised harmonizer per original block index, seeded for reproducibility.

    Returns:
        ``{original index: Harmonizer}``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {i: Harmonizer(hidden_size, rank, activation).to(device=device, dtype=dtype) for i in indices}

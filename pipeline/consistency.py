"""Consistent self-attention across the frames of a sequential request (StoryDiffusion).

StoryDiffusion (Zhou et al. 2024) keeps a subject the same across the images of one series
without training: in the self-attention of the UNet's up blocks, each frame's queries
attend to its own keys and values plus tokens sampled from the other frames of the series.
The frames of a request run as one batch; :class:`pipeline.attention.FrameGroup` says which
rows they are. Unconditional rows share among unconditional rows and conditional among
conditional, as in StoryDiffusion's guided batch.

Which tokens are shared is drawn from a generator seeded by the request's seed, the layer's
token count and the timestep: a request gives the same frames whatever batch it runs in.
Rows outside any group of two or more frames run the processor this one replaced. The
frames of a group attend with the helpers of :mod:`pipeline.attention`: the wrapped
processor could only take the shared tokens as a longer context and project them again,
up to twice the tokens through ``to_k`` and ``to_v`` in every shared layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from .attention import AttentionContext, CallState, attend, finish, project

__all__ = ["ConsistencyConfig", "ConsistentSelfAttention", "install_consistency"]


@dataclass(frozen=True)
class ConsistencyConfig:
    """Where and how much the frames of a series share."""

    # Self-attention layers whose processor name starts with one of these share tokens;
    # StoryDiffusion uses the up blocks (for SDXL, the 32x32 and 64x64 token grids).
    layers: tuple[str, ...] = ("up_blocks.",)
    # Fraction of the other frames' tokens each frame attends to (StoryDiffusion's 0.5).
    share: float = 0.5
    # At most this many shared tokens per own token, so that a long series costs at most
    # (1 + max_ratio) times the stock self-attention.
    max_ratio: float = 2.0

    def shared_count(self, frames: int, tokens: int) -> int:
        """How many of the other frames' tokens each frame attends to."""
        wanted = math.ceil(self.share * (frames - 1) * tokens)
        return min(wanted, math.ceil(self.max_ratio * tokens))


class ConsistentSelfAttention:
    """Self-attention in which the frames of a group see part of one another."""

    def __init__(self, context: AttentionContext, config: ConsistencyConfig, base: Any) -> None:
        self.context = context
        self.config = config
        # The processor this one replaced; rows outside a group run it unchanged.
        self.base = base

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        state = self.context.current
        if state is not None:
            state.frame_calls += 1
        if (
            state is None
            or not state.frame_groups
            or encoder_hidden_states is not None
            or attention_mask is not None
        ):
            return self.base(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs
            )
        batch = hidden_states.shape[0] // 2  # unconditional rows, then conditional rows
        device = hidden_states.device
        out = torch.empty_like(hidden_states)
        grouped: list[int] = []
        for group_index, group in enumerate(state.frame_groups):
            for half in (0, batch):
                indices = [half + sample for sample in group.samples]
                rows = torch.tensor(indices, device=device)
                shared = self._shared(attn, hidden_states[rows], state, group_index)
                out.index_copy_(0, rows, shared)
                grouped += indices
        alone = sorted(set(range(hidden_states.shape[0])) - set(grouped))
        if alone:
            rows = torch.tensor(alone, device=device)
            out.index_copy_(0, rows, self.base(attn, hidden_states[rows], None, None, temb))
        return out

    def _shared(
        self, attn: Attention, hidden_states: torch.Tensor, state: CallState, group: int
    ) -> torch.Tensor:
        """Self-attention of one group's frames ``[G, N, C]``, each frame's keys and values
        extended with tokens of the others."""
        frames, tokens, _ = hidden_states.shape
        query, key, value = project(attn, hidden_states, hidden_states)
        count = self.config.shared_count(frames, tokens)
        picks = state.shared_indices(group, frames, tokens, count, hidden_states.device)

        def extended(heads: torch.Tensor) -> torch.Tensor:
            # [G, h, N, d] -> [G, h, N + count, d]: each frame's own tokens, then those it
            # picked from the frames' concatenated tokens.
            pooled = heads.transpose(0, 1).flatten(1, 2)  # [h, G * N, d]
            return torch.cat([heads, pooled[:, picks].transpose(0, 1)], dim=2)

        out = attend(attn, query, extended(key), extended(value))
        return finish(attn, out, hidden_states)


def install_consistency(
    unet: UNet2DConditionModel, context: AttentionContext, config: ConsistencyConfig
) -> None:
    """Put a :class:`ConsistentSelfAttention` on the self-attention layers ``config``
    names, wrapping the processor found there (installing again re-wraps the original)."""
    processors = dict(unet.attn_processors)
    for name, base in processors.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if (
            not name.endswith("attn1.processor")
            or not name.startswith(config.layers)
            or attn.group_norm is not None
            or attn.spatial_norm is not None
        ):
            continue  # only the plain self-attention of transformer blocks
        if isinstance(base, ConsistentSelfAttention):
            base = base.base
        processors[name] = ConsistentSelfAttention(context, config, base)
    unet.set_attn_processor(processors)

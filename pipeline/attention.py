"""The per-call state that the pipeline's own attention processors read, and the attention
arithmetic they share.

The processors are installed in the UNet once, at load time (:mod:`pipeline.ip_adapter` on
the cross-attention layers, :mod:`pipeline.consistency` on the self-attention layers). What
changes from call to call (which rows of the batch carry which reference tokens, with which
weights, layers and masks, and which rows are frames of one sequential request) is set by
:meth:`AttentionContext.active` around each UNet call. With no state active, and for the rows
that carry none, the processors run the stock attention, so a request's image does not
depend on what its neighbours in the batch asked for.

Rows follow the UNet batch of classifier-free guidance: the B unconditional rows, then the B
conditional rows.

Rows that need more than the stock attention (reference tokens, keys shared across frames)
go through :func:`project`, :func:`attend` and :func:`finish`: diffusers'
``AttnProcessor2_0`` cut at the two places where the processors change something (the keys
and values, and the output before its projection), so both processors compute the stock
part the same way, ``norm_q``/``norm_k`` included.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from .errors import PipelineError
from .geometry import Box, Size

__all__ = [
    "FULL_VIEW",
    "AttentionContext",
    "CallState",
    "FrameGroup",
    "ReferenceTokens",
    "attend",
    "finish",
    "project",
    "split_heads",
    "token_grid",
]

# The whole image: the view of a call that is not a tile, the region of a reference that
# has none.
FULL_VIEW = Box(top=0.0, left=0.0, bottom=1.0, right=1.0)


@dataclass(frozen=True)
class ReferenceTokens:
    """IP-Adapter inputs of one batch, ``R`` reference slots per row (unused slots have
    weight 0)."""

    tokens: torch.Tensor  # [2B, R, T, D]: unconditional rows hold the zero-image tokens
    scales: torch.Tensor  # [2B, R]: each reference's weight
    style: torch.Tensor  # [2B, R] bool: acts only in the style layers (InstantStyle)
    regions: torch.Tensor  # [2B, R, 4]: a Box's four fields; FULL_VIEW = everywhere
    background: torch.Tensor  # [2B, R] bool: the region is what the row's other boxes leave


@dataclass(frozen=True)
class FrameGroup:
    """Samples (batch indices) that are frames of one sequential request."""

    samples: tuple[int, ...]
    seed: int  # the request's seed: which tokens frames share is drawn from it


def token_grid(latent_size: Size, tokens: int) -> Size:
    """The columns and rows of an attention layer's token grid: the UNet halves the latent
    (rounding up) once per down block, so the grid is found by halving until it fits."""
    grid = latent_size
    while grid.area > tokens:
        grid = Size(width=-(-grid.width // 2), height=-(-grid.height // 2))
    if grid.area != tokens:
        raise PipelineError(
            f"No token grid of {tokens} tokens for a {latent_size.width}x{latent_size.height} "
            "latent."
        )
    return grid


@dataclass
class CallState:
    """What one UNet call's processors read; derived tensors are cached per call."""

    references: ReferenceTokens | None
    frame_groups: tuple[FrameGroup, ...]
    view: Box
    latent_size: Size
    timestep: float
    # Visits of each processor kind, so the pipeline can tell that they are installed.
    reference_calls: int = 0
    frame_calls: int = 0
    _rows: dict[bool, tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)
    _other_rows: dict[bool, torch.Tensor] = field(default_factory=dict)
    _masks: dict[int, torch.Tensor | None] = field(default_factory=dict)
    _shared: dict[tuple[int, int, int, int], torch.Tensor] = field(default_factory=dict)

    def reference_rows(self, style_layer: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The rows that attend to reference tokens in a layer and their per-reference
        scales ``[n, R]``, or None when no row does. Style references count only in style
        layers; a row whose scales are all 0 is left out, so its attention is the stock
        one, untouched."""
        if style_layer not in self._rows:
            self._rows[style_layer] = None
            if self.references is not None:
                scales = self.references.scales
                if not style_layer:
                    scales = scales.masked_fill(self.references.style, 0)
                rows = (scales != 0).any(dim=1).nonzero().flatten()
                if len(rows):
                    self._rows[style_layer] = (rows, scales[rows])
        return self._rows[style_layer]

    def rows_without_references(self, style_layer: bool) -> torch.Tensor:
        """The rows that :meth:`reference_rows` leaves out, in order (they run the stock
        attention)."""
        if style_layer not in self._other_rows:
            plan = self.reference_rows(style_layer)
            assert self.references is not None and plan is not None
            rows = plan[0]
            free = torch.ones(self.references.scales.shape[0], dtype=torch.bool, device=rows.device)
            free[rows] = False
            self._other_rows[style_layer] = free.nonzero().flatten()
        return self._other_rows[style_layer]

    def reference_masks(self, tokens: int) -> torch.Tensor | None:
        """Per-token masks ``[2B, tokens, R]`` of the references' regions at a layer with
        ``tokens`` tokens, or None when every reference covers the whole image."""
        if tokens not in self._masks:
            self._masks[tokens] = self._build_masks(tokens)
        return self._masks[tokens]

    def _build_masks(self, tokens: int) -> torch.Tensor | None:
        refs = self.references
        assert refs is not None
        full = torch.tensor(FULL_VIEW, device=refs.regions.device, dtype=refs.regions.dtype)
        boxed = (refs.regions != full).any(dim=-1)  # [2B, R]
        if not (boxed.any() or refs.background.any()):
            return None
        grid, view = token_grid(self.latent_size, tokens), self.view
        rows, columns = grid.height, grid.width
        # Token centres in whole-image fractions: a tile sees only its part of the image.
        view_height, view_width = view.bottom - view.top, view.right - view.left
        ys = view.top + (torch.arange(rows, device=full.device) + 0.5) / rows * view_height
        xs = view.left + (torch.arange(columns, device=full.device) + 0.5) / columns * view_width
        y = ys[:, None].expand(rows, columns).flatten()  # row-major, as the UNet flattens
        x = xs[None, :].expand(rows, columns).flatten()
        # Each region's sides [2B, R, 1], in the order of Box's fields.
        top, left, bottom, right = refs.regions[..., None].unbind(-2)
        inside = (top <= y) & (y < bottom) & (left <= x) & (x < right)
        masks = inside.to(refs.scales.dtype)  # [2B, R, tokens]
        # A background reference covers what the row's boxed references leave (all of the
        # image when they leave nothing).
        others = (masks * (boxed & ~refs.background)[..., None]).amax(dim=1)  # [2B, tokens]
        rest = 1 - others
        rest = torch.where(rest.sum(dim=-1, keepdim=True) > 0, rest, torch.ones_like(rest))
        masks = torch.where(refs.background[..., None], rest[:, None, :], masks)
        return masks.transpose(1, 2).contiguous()

    def shared_indices(
        self, group: int, frames: int, tokens: int, count: int, device: torch.device
    ) -> torch.Tensor:
        """For each frame of ``frame_groups[group]``, ``count`` indices into the frames'
        concatenated tokens (``frames * tokens``), drawn from the other frames only;
        ``[frames, count]``. The draw depends on the request's seed, the layer's size and
        the timestep, never on the batch around the request."""
        key = (group, frames, tokens, count)
        if key not in self._shared:
            seed = self.frame_groups[group].seed
            mixed = (seed * 1_000_003 + tokens) * 1_000_003 + round(self.timestep * 1000)
            generator = torch.Generator("cpu").manual_seed(mixed % 2**63)
            picks = []
            for frame in range(frames):
                others = torch.randperm((frames - 1) * tokens, generator=generator)[:count]
                # Skip the frame's own tokens: it already attends to all of them.
                picks.append(others + (others >= frame * tokens) * tokens)
            self._shared[key] = torch.stack(picks).to(device)
        return self._shared[key]


class AttentionContext:
    """The state the installed processors read; set per UNet call, None between calls."""

    def __init__(self) -> None:
        self.current: CallState | None = None

    @contextmanager
    def active(self, state: CallState) -> Iterator[CallState]:
        """Make ``state`` current for the duration of one UNet call."""
        previous, self.current = self.current, state
        try:
            yield state
        finally:
            self.current = previous


def split_heads(attn: Attention, states: torch.Tensor) -> torch.Tensor:
    """Projected states ``[n, tokens, heads x d]`` as ``[n, heads, tokens, d]``."""
    rows, tokens, inner = states.shape
    return states.view(rows, tokens, attn.heads, inner // attn.heads).transpose(1, 2)


def project(
    attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's query of ``hidden_states`` and its key and value of ``context``, each
    ``[n, heads, tokens, d]``, with the layer's query and key norms applied where it has
    them, as ``AttnProcessor2_0`` prepares them for the kernel. For the attention of a
    transformer block, which has no group, spatial or cross-attention norm (the only
    layers the pipeline's processors are installed on)."""
    query = split_heads(attn, attn.to_q(hidden_states))
    key = split_heads(attn, attn.to_k(context))
    value = split_heads(attn, attn.to_v(context))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return query, key, value


def attend(
    attn: Attention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention of per-head tensors, ``[n, heads, queries, d]``;
    ``attention_mask`` is the layer's (the UNet's ``[n, 1, keys]`` bias of padded prompt
    windows), spread over the heads as ``AttnProcessor2_0`` does."""
    if attention_mask is not None:
        rows, keys = query.shape[0], key.shape[2]
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, rows)
        attention_mask = attention_mask.view(rows, attn.heads, -1, attention_mask.shape[-1])
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)


def finish(attn: Attention, out: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """The attention output ``[n, heads, tokens, d]`` through the layer's output
    projection, residual connection and rescaling, as ``AttnProcessor2_0`` ends;
    ``hidden_states`` are the layer's input."""
    out = out.transpose(1, 2).flatten(2)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor

"""The per-call state that the pipeline's own attention processors read.

The processors are installed in the UNet once, at load time (:mod:`pipeline.ip_adapter` on
the cross-attention layers, :mod:`pipeline.consistency` on the self-attention layers). What
changes from call to call (which rows of the batch carry which reference tokens, with which
weights, layers and masks, and which rows are frames of one sequential request) is set by
:meth:`AttentionContext.active` around each UNet call. With no state active, and for the rows
that carry none, the processors run the stock attention, so a request's image does not
depend on what its neighbours in the batch asked for.

Rows follow the UNet batch of classifier-free guidance: the B unconditional rows, then the B
conditional rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .errors import PipelineError

__all__ = [
    "FULL_VIEW",
    "AttentionContext",
    "CallState",
    "FrameGroup",
    "ReferenceTokens",
    "token_grid",
]

# (top, left, bottom, right) as fractions of the whole image.
FULL_VIEW = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class ReferenceTokens:
    """IP-Adapter inputs of one batch, ``R`` reference slots per row (unused slots have
    weight 0)."""

    tokens: torch.Tensor  # [2B, R, T, D]: unconditional rows hold the zero-image tokens
    scales: torch.Tensor  # [2B, R]: each reference's weight
    style: torch.Tensor  # [2B, R] bool: acts only in the style layers (InstantStyle)
    regions: torch.Tensor  # [2B, R, 4]: (top, left, bottom, right) box, FULL_VIEW = everywhere
    background: torch.Tensor  # [2B, R] bool: the region is what the row's other boxes leave


@dataclass(frozen=True)
class FrameGroup:
    """Samples (batch indices) that are frames of one sequential request."""

    samples: tuple[int, ...]
    seed: int  # the request's seed: which tokens frames share is drawn from it


def token_grid(latent_size: tuple[int, int], tokens: int) -> tuple[int, int]:
    """The (rows, columns) of an attention layer's token grid: the UNet halves the latent
    (rounding up) once per down block, so the grid is found by halving until it fits."""
    height, width = latent_size
    while height * width > tokens:
        height, width = -(-height // 2), -(-width // 2)
    if height * width != tokens:
        raise PipelineError(f"No token grid of {tokens} tokens for a {latent_size} latent.")
    return height, width


@dataclass
class CallState:
    """What one UNet call's processors read; derived tensors are cached per call."""

    references: ReferenceTokens | None
    frame_groups: tuple[FrameGroup, ...]
    view: tuple[float, float, float, float]
    latent_size: tuple[int, int]
    timestep: float
    # Visits of each processor kind, so the pipeline can tell that they are installed.
    reference_calls: int = 0
    frame_calls: int = 0
    _rows: dict[bool, tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=dict)
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
        rows, columns = token_grid(self.latent_size, tokens)
        top, left, bottom, right = self.view
        # Token centres in whole-image fractions: a tile sees only its part of the image.
        ys = top + (torch.arange(rows, device=full.device) + 0.5) / rows * (bottom - top)
        xs = left + (torch.arange(columns, device=full.device) + 0.5) / columns * (right - left)
        y = ys[:, None].expand(rows, columns).flatten()  # row-major, as the UNet flattens
        x = xs[None, :].expand(rows, columns).flatten()
        box = refs.regions[..., None]  # [2B, R, 4, 1]
        inside = (box[:, :, 0] <= y) & (y < box[:, :, 2]) & (box[:, :, 1] <= x) & (x < box[:, :, 3])
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

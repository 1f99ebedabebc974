"""The attention arithmetic the reference and frame processors share, against diffusers'
stock processor, and what they leave to the processor they wrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from PIL import Image

from pipeline import ImageGenerator
from pipeline.attention import (
    FULL_VIEW,
    AttentionContext,
    CallState,
    FrameGroup,
    ReferenceTokens,
    attend,
    finish,
    project,
)
from pipeline.consistency import ConsistencyConfig, ConsistentSelfAttention
from pipeline.geometry import Size
from pipeline.ip_adapter import ReferenceAttention
from pipeline.sdxl import ReferenceInput, Sample

# A layer with query and key norms (SDXL's have none; newer models' do).
QK_NORMS = [None, "layer_norm"]


def layer(qk_norm: str | None, cross_attention_dim: int | None = None) -> Attention:
    torch.manual_seed(0)
    return Attention(
        query_dim=32, cross_attention_dim=cross_attention_dim, heads=4, dim_head=8, qk_norm=qk_norm
    ).eval()


@pytest.mark.parametrize("qk_norm", QK_NORMS)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_helpers_compute_the_stock_attention(qk_norm: str | None, masked: bool) -> None:
    attn = layer(qk_norm, cross_attention_dim=16)
    hidden, context = torch.randn(3, 10, 32), torch.randn(3, 7, 16)
    mask = None
    if masked:
        # The UNet's bias for a padded prompt: 0 where attended, -10000 where not.
        mask = torch.zeros(3, 1, 7)
        mask[1, :, 5:] = -10000.0
    with torch.inference_mode():
        ours = finish(attn, attend(attn, *project(attn, hidden, context), mask), hidden)
        theirs = AttnProcessor2_0()(attn, hidden, context, mask)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("qk_norm", QK_NORMS)
def test_frames_that_share_nothing_attend_as_the_stock_processor(qk_norm: str | None) -> None:
    attn = layer(qk_norm)
    hidden = torch.randn(4, 16, 32)  # two frames: unconditional rows, then conditional
    context = AttentionContext()
    processor = ConsistentSelfAttention(context, ConsistencyConfig(share=0.0), AttnProcessor2_0())
    state = CallState(None, (FrameGroup(samples=(0, 1), seed=5),), FULL_VIEW, Size(4, 4), 999.0)
    with torch.inference_mode(), context.active(state):
        ours = processor(attn, hidden)
        theirs = AttnProcessor2_0()(attn, hidden)
    assert state.frame_calls == 1
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("qk_norm", QK_NORMS)
def test_references_that_add_nothing_attend_as_the_stock_processor(qk_norm: str | None) -> None:
    """Reference rows compute the text attention themselves; with reference projections
    of zero the reference term is zero, so what is left is the text attention."""
    attn = layer(qk_norm, cross_attention_dim=16)
    hidden, text = torch.randn(2, 16, 32), torch.randn(2, 7, 16)
    zero = torch.nn.Linear(16, 32, bias=False)
    torch.nn.init.zeros_(zero.weight)
    context = AttentionContext()
    processor = ReferenceAttention(
        context, zero, zero, layer="attn2", style_layer=False, base=AttnProcessor2_0()
    )
    references = ReferenceTokens(
        tokens=torch.randn(2, 1, 4, 16),
        scales=torch.ones(2, 1),
        style=torch.zeros(2, 1, dtype=torch.bool),
        regions=torch.tensor([FULL_VIEW, FULL_VIEW])[:, None],
        background=torch.zeros(2, 1, dtype=torch.bool),
    )
    state = CallState(references, (), FULL_VIEW, Size(4, 4), 999.0)
    with torch.inference_mode(), context.active(state):
        ours = processor(attn, hidden, text)
        theirs = AttnProcessor2_0()(attn, hidden, text)
    assert state.reference_calls == 1
    assert torch.equal(ours, theirs)


def test_rows_without_references_run_the_wrapped_processor(
    tiny: ImageGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a batch where some samples have references, the others' text attention goes
    through the processor the acceleration settings installed (xformers, when asked)."""
    rows_seen: list[int] = []
    for processor in tiny.pipeline.components.unet.attn_processors.values():
        if isinstance(processor, ReferenceAttention):

            def spy(attn, hidden_states, *args, real=processor.base, **kwargs):
                rows_seen.append(hidden_states.shape[0])
                return real(attn, hidden_states, *args, **kwargs)

            monkeypatch.setattr(processor, "base", spy)
    reference = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    samples = [
        Sample("a lighthouse", 1, 7.5, (ReferenceInput(reference),)),
        Sample("a red fox", 2, 7.5),
    ]
    tiny.pipeline(samples, width=64, height=64, steps=1)
    # The fox's unconditional and conditional rows, in every cross-attention layer.
    assert rows_seen and set(rows_seen) == {2}

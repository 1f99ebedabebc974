"""IP-Adapter's decoupled cross-attention, with per-row, per-reference scales and masks.

diffusers' ``IPAdapterAttnProcessor2_0`` takes one scale per adapter for the whole call.
Requests of one batch carry different references, so here each row of the batch has its
own reference tokens and weights, read from :class:`pipeline.attention.CallState`:

- each reference attends on its own (its own softmax, as diffusers does for masked
  references) and adds ``weight x mask x attention(query, its tokens)`` to the text
  attention, before the output projection;
- a *style* reference acts only in the style layers (InstantStyle, Wang et al. 2024: for
  SDXL ``up_blocks.0.attentions.1``, the middle attention of the lowest-resolution
  cross-attention up block, carries style; ``tiny`` has the same block under the same name);
- a reference with a region is masked to the tokens of that region;
- a row with no reference, or whose weights are all 0, runs the processor this one wraps
  (the stock attention, on the kernel :mod:`pipeline.acceleration` chose), as it would
  without an adapter.

Rows with references compute their text attention with the helpers of
:mod:`pipeline.attention` rather than through the wrapped processor: the reference term is
added before the output projection, as diffusers adds it, and the wrapped processor only
returns its output projected already.

The key/value projections (``to_k_ip``, ``to_v_ip``) live in :class:`AdapterLayers`, not in
the processors, so that re-installing processors never loses weights.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from .attention import AttentionContext, attend, finish, project, split_heads
from .errors import ModelUnavailable

__all__ = [
    "AdapterLayers",
    "ReferenceAttention",
    "cross_attention_layers",
    "install_ip_adapter",
    "style_layer_prefix",
]


def cross_attention_layers(unet: UNet2DConditionModel) -> list[str]:
    """The UNet's cross-attention processor names, in diffusers' order."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def style_layer_prefix(unet: UNet2DConditionModel) -> str:
    """InstantStyle's style block: the middle attention of the first (lowest-resolution)
    cross-attention up block, ``up_blocks.0.attentions.1.`` for SDXL and for ``tiny``."""
    for index, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None)
        if attentions:
            return f"up_blocks.{index}.attentions.{min(1, len(attentions) - 1)}."
    raise ModelUnavailable("The UNet has no cross-attention up block for style references.")


class AdapterLayers(torch.nn.Module):
    """IP-Adapter's image key/value projections of every cross-attention layer."""

    def __init__(self, unet: UNet2DConditionModel, weights: dict[str, torch.Tensor]) -> None:
        """``weights`` are a checkpoint's ``ip_adapter.*`` tensors without the prefix. They
        are numbered 1, 3, 5, ... along the cross-attention layers (the original IP-Adapter
        numbered every processor, self- and cross-attention alternating; diffusers'
        ``_convert_ip_adapter_attn_to_diffusers`` reads them the same way)."""
        super().__init__()
        self.names = tuple(cross_attention_layers(unet))
        self.keys = torch.nn.ModuleList()
        self.values = torch.nn.ModuleList()
        for index, name in enumerate(self.names):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            for part, target in (("to_k", self.keys), ("to_v", self.values)):
                key = f"{2 * index + 1}.{part}_ip.weight"
                expected = getattr(attn, part).weight.shape
                if key not in weights or weights[key].shape != expected:
                    found = tuple(weights[key].shape) if key in weights else "missing"
                    raise ModelUnavailable(
                        f"The IP-Adapter does not fit this UNet: {key} is {found}, "
                        f"{name} needs {tuple(expected)}."
                    )
                linear = torch.nn.Linear(expected[1], expected[0], bias=False)
                linear.weight.data.copy_(weights[key])
                target.append(linear)


class ReferenceAttention:
    """Cross-attention over the prompt plus each row's reference tokens."""

    def __init__(
        self,
        context: AttentionContext,
        to_k_ip: torch.nn.Linear,
        to_v_ip: torch.nn.Linear,
        *,
        layer: str,
        style_layer: bool,
        base: Any,
    ) -> None:
        self.context = context
        self.to_k_ip, self.to_v_ip = to_k_ip, to_v_ip
        self.layer = layer  # the processor's name in the UNet
        self.style_layer = style_layer
        # The processor this one replaced; rows without references run it unchanged.
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
            state.reference_calls += 1
        plan = None if state is None else state.reference_rows(self.style_layer)
        if state is None or plan is None or encoder_hidden_states is None:
            return self.base(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs
            )
        assert state.references is not None
        rows, scales = plan
        batch, tokens, _ = hidden_states.shape
        masks = state.reference_masks(tokens)
        weights = scales[:, None, :] if masks is None else scales[:, None, :] * masks[rows]
        references = state.references.tokens[rows]
        if len(rows) == batch:
            return self._with_references(
                attn, hidden_states, encoder_hidden_states, attention_mask, references, weights
            )
        # The rows without references run the processor this one wraps, on the kernel the
        # acceleration settings chose (xformers when asked), as they would without an adapter.
        others = state.rows_without_references(self.style_layer)

        def inputs(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
            mask = None if attention_mask is None else attention_mask[index]
            return hidden_states[index], encoder_hidden_states[index], mask

        out = torch.empty_like(hidden_states)
        out[others] = self.base(attn, *inputs(others), temb, **kwargs)
        out[rows] = self._with_references(attn, *inputs(rows), references, weights)
        return out

    def _with_references(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        references: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """The text attention plus the reference term, added before the output projection
        as diffusers' ``IPAdapterAttnProcessor2_0`` adds it: the base processor returns its
        output projected already, so these rows compute the text attention themselves."""
        query, key, value = project(attn, hidden_states, encoder_hidden_states)
        out = attend(attn, query, key, value, attention_mask)
        out = out + self._reference_attention(attn, query, references, weights).to(out.dtype)
        return finish(attn, out, hidden_states)

    def _reference_attention(
        self,
        attn: Attention,
        query: torch.Tensor,
        tokens: torch.Tensor,
        weights: torch.Tensor,
    ) -> torch.Tensor:
        """``sum_r weight_r x mask_r x attention(q, k_r, v_r)`` for ``query`` ``[n, h, N, d]``,
        ``tokens`` ``[n, R, T, D]`` and ``weights`` ``[n, N or 1, R]``: each reference
        through its own attention call, as diffusers' ``IPAdapterAttnProcessor2_0`` computes
        a reference (the same kernel, so one reference gives its very bits). References do
        not compete for attention, and each one's weight and mask apply to its own output."""
        total = None
        for slot in range(tokens.shape[1]):
            key = split_heads(attn, self.to_k_ip(tokens[:, slot]))
            value = split_heads(attn, self.to_v_ip(tokens[:, slot]))
            term = weights[:, None, :, slot, None] * attend(attn, query, key, value)
            total = term if total is None else total + term
        assert total is not None
        return total


def install_ip_adapter(
    unet: UNet2DConditionModel, context: AttentionContext, layers: AdapterLayers
) -> None:
    """Put a :class:`ReferenceAttention` on every cross-attention layer of ``unet``,
    wrapping the processor found there (once: installing again re-wraps the original)."""
    style = style_layer_prefix(unet)
    processors = dict(unet.attn_processors)
    for name, to_k_ip, to_v_ip in zip(layers.names, layers.keys, layers.values, strict=True):
        base = processors[name]
        if isinstance(base, ReferenceAttention):
            base = base.base
        processors[name] = ReferenceAttention(
            context, to_k_ip, to_v_ip, layer=name, style_layer=name.startswith(style), base=base
        )
    unet.set_attn_processor(processors)

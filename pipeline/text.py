"""Prompt embeddings for SDXL's two text encoders, without truncation.

CLIP sees 77 tokens at a time. A longer prompt is cut into windows of 75 tokens, each
wrapped in BOS/EOS and encoded on its own; the windows' hidden states are concatenated
along the sequence, so the UNet's cross-attention sees every token. Prompts of a batch with
fewer windows are padded with zero windows that the attention mask hides, so a request's
embedding does not depend on its neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .components import Components
from .prompts import PromptTokenizer

__all__ = ["WINDOW", "PromptEmbeddings", "PromptEncoder"]

WINDOW = 77
_BODY = WINDOW - 2


@dataclass
class PromptEmbeddings:
    """Per-sample cross-attention states, pooled vectors and window mask."""

    states: torch.Tensor  # [B, windows * 77, D]
    pooled: torch.Tensor  # [B, P]
    mask: torch.Tensor | None  # [B, windows * 77], 1 = attend; None when nothing is padded

    def zeros_like(self) -> PromptEmbeddings:
        """The unconditional embedding SDXL uses for an empty negative prompt."""
        return PromptEmbeddings(
            torch.zeros_like(self.states), torch.zeros_like(self.pooled), self.mask
        )


class PromptEncoder:
    """Encodes prompts with both text encoders."""

    def __init__(self, components: Components, *, device: torch.device) -> None:
        self._components = components
        self._device = device

    def _windows(self, prompt: str, tokenizer: PromptTokenizer) -> list[list[int]]:
        ids = tokenizer.encode(prompt)
        bodies = [ids[i : i + _BODY] for i in range(0, len(ids), _BODY)] or [[]]
        return [
            [tokenizer.bos_id, *body, tokenizer.eos_id] + [tokenizer.pad_id] * (_BODY - len(body))
            for body in bodies
        ]

    def _encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """States [windows * 77, D] and pooled [P] of one prompt."""
        parts, pooled = [], None
        components = self._components
        for encoder, tokenizer in (
            (components.text_encoder, components.tokenizer),
            (components.text_encoder_2, components.tokenizer_2),
        ):
            ids = torch.tensor(self._windows(prompt, tokenizer), device=self._device)
            output = encoder(ids, output_hidden_states=True)
            # SDXL conditions on the penultimate layer of both encoders.
            parts.append(output.hidden_states[-2].reshape(-1, output.hidden_states[-2].shape[-1]))
            if encoder is components.text_encoder_2:
                # The pooled vector of the first window carries the prompt's opening,
                # where SDXL prompts put their subject.
                pooled = output.text_embeds[0]
        assert pooled is not None
        return torch.cat(parts, dim=-1), pooled

    def encode(self, prompts: Sequence[str]) -> PromptEmbeddings:
        """Embeddings of a batch of prompts (equal prompts are encoded once)."""
        cache = {prompt: self._encode_one(prompt) for prompt in dict.fromkeys(prompts)}
        longest = max(states.shape[0] for states, _ in cache.values())
        states, pooled, masks = [], [], []
        for prompt in prompts:
            sample_states, sample_pooled = cache[prompt]
            missing = longest - sample_states.shape[0]
            states.append(torch.nn.functional.pad(sample_states, (0, 0, 0, missing)))
            pooled.append(sample_pooled)
            mask = torch.ones(longest, device=self._device)
            mask[sample_states.shape[0] :] = 0
            masks.append(mask)
        padded = any(cache[p][0].shape[0] < longest for p in prompts)
        return PromptEmbeddings(
            torch.stack(states), torch.stack(pooled), torch.stack(masks) if padded else None
        )

"""Prompt text: CLIP BPE tokens, and the items a prompt enumerates.

The tokenizer is CLIP's byte-level BPE (its vocabulary ships in ``pipeline/data``, MIT
licensed, see CLIP-LICENSE.txt there), rebuilt with the Rust ``tokenizers`` library: it
gives the same ids as transformers' ``CLIPTokenizer``, imports in milliseconds and needs no
model hub, so the HTTP shim can count tokens on every request.

The text encoders read their prompts through :class:`PromptTokenizer`: this one, or the
tokenizer a weights directory ships (:func:`load_tokenizer`, transformers on first use).
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "LONGEST_TOKEN_BYTES",
    "VOCAB_SIZE",
    "PromptTokenizer",
    "clip_tokenizer",
    "count_prompt_tokens",
    "enumerate_items",
    "frame_prompts",
    "load_tokenizer",
    "sdxl_tokenizers",
]

VOCAB_SIZE = 49408
BOS_ID = 49406
EOS_ID = 49407
# The most text one token covers: 32 bytes (eight 4-byte emoji), so never more than 32
# characters. Bounds a prompt's length from its token limit without tokenizing it; a test
# recomputes it from the vocabulary.
LONGEST_TOKEN_BYTES = 32
# CLIP's pre-tokenisation pattern (openai/CLIP simple_tokenizer.py).
_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"""
    r"""|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def _byte_alphabet() -> list[str]:
    """GPT-2's reversible byte-to-unicode table, in CLIP's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


@cache
def clip_tokenizer() -> Tokenizer:
    """CLIP's tokenizer, without BOS/EOS (callers add them per 77-token window)."""
    vocabulary = resources.files("pipeline").joinpath("data", "bpe_simple_vocab_16e6.txt.gz")
    with vocabulary.open("rb") as raw, gzip.open(raw) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : VOCAB_SIZE - 256 * 2 - 2 + 1]]
    alphabet = _byte_alphabet()
    vocab = [*alphabet, *(ch + "</w>" for ch in alphabet), *("".join(m) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = Tokenizer(
        models.BPE(
            vocab={token: index for index, token in enumerate(vocab)},
            merges=merges,
            end_of_word_suffix="</w>",
            unk_token="<|endoftext|>",
        )
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


@dataclass(frozen=True)
class PromptTokenizer:
    """One text encoder's tokenizer as prompt windows use it: a prompt's ids without
    BOS/EOS, and the ids each window starts, ends and is padded with."""

    encode: Callable[[str], list[int]]
    bos_id: int
    eos_id: int
    pad_id: int


def sdxl_tokenizers() -> tuple[PromptTokenizer, PromptTokenizer]:
    """SDXL's two tokenizers on :func:`clip_tokenizer`: the first pads with the end token,
    the second with "!" (id 0)."""

    def encode(prompt: str) -> list[int]:
        return clip_tokenizer().encode(prompt).ids

    first = PromptTokenizer(encode, BOS_ID, EOS_ID, pad_id=EOS_ID)
    second = PromptTokenizer(encode, BOS_ID, EOS_ID, pad_id=0)
    return first, second


def load_tokenizer(folder: Path) -> PromptTokenizer:
    """The CLIP tokenizer saved in ``folder`` (a diffusers weights directory's
    ``tokenizer/`` or ``tokenizer_2/``), from its local files only."""
    from transformers import CLIPTokenizer  # heavy: only a process that loads weights pays

    tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)

    def encode(prompt: str) -> list[int]:
        # Quietly past 77 tokens: long prompts are cut into windows, never truncated.
        return tokenizer.encode(prompt, add_special_tokens=False, verbose=False)

    return PromptTokenizer(
        encode, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )


def count_prompt_tokens(prompt: str) -> int:
    """CLIP BPE tokens in a prompt, without BOS/EOS."""
    # encode_batch releases the GIL where encode holds it (about 1 s for 1 MB of text), so
    # the HTTP shim's event loop keeps running while a worker thread counts.
    return len(clip_tokenizer().encode_batch([prompt])[0].ids)


_NUMBERED = re.compile(r"(?:^|\s)(?:\(?\d{1,2}[.)]|[-*•])\s+")
_CLOSING = re.compile(r",?\s+(?:and|or)\s+[^,;]+$", re.IGNORECASE)
_SPLIT = re.compile(r"\s*(?:;|,\s*(?:and|or)\s+|,|\s+(?:and|or)\s+)\s*", re.IGNORECASE)


def enumerate_items(prompt: str) -> list[str]:
    """The items a prompt enumerates, e.g. "... four life stages: child, adolescent, adult,
    elderly." -> ["child", "adolescent", "adult", "elderly"]; [] when it lists fewer than
    two. Numbered or bulleted lists win; otherwise the text after the last colon is split
    on commas, semicolons, "and" and "or". Without a colon, only a list closed by "and" or
    "or" counts ("a cat, a dog and a bird"): comma-separated style words ("cinematic,
    moody, 35mm") are not subjects.
    """
    text = prompt.strip()
    numbered = [part.strip(" .;,\n") for part in _NUMBERED.split(text)[1:]]
    if len([p for p in numbered if p]) >= 2:
        return [p for p in numbered if p]
    if ":" in text:
        text = text.rsplit(":", 1)[1]
    elif not _CLOSING.search(text):
        return []
    # Only the first sentence of the list counts ("..., adult, elderly. Soft light.").
    text = re.split(r"[.!?](?:\s|$)", text.strip(), maxsplit=1)[0]
    items = [item.strip(" .\"'") for item in _SPLIT.split(text)]
    items = [item for item in items if item]
    return items if len(items) >= 2 else []


def _list_bounds(text: str) -> tuple[str, str]:
    """The text before and after the enumeration :func:`enumerate_items` reads."""
    numbered = _NUMBERED.search(text)
    if numbered is not None and len(_NUMBERED.split(text)) > 2:
        return text[: numbered.start()], ""
    head, body = text.rsplit(":", 1) if ":" in text else ("", text)
    sentence_end = re.search(r"[.!?](?:\s|$)", body.strip())
    tail = body.strip()[sentence_end.end() :] if sentence_end else ""
    return head, tail


def frame_prompts(prompt: str, frames: int) -> list[str]:
    """The prompt of each frame of a sequential request: "Series of the same person at four
    life stages: child, adolescent, adult, elderly." gives "Series of the same person at
    four life stages, child" and so on, with any text after the list kept ("... elderly.
    Soft light." -> "..., child. Soft light."). When the prompt enumerates fewer items than
    there are frames, every frame gets the whole prompt (frames then differ by their seeds);
    extra items are dropped.
    """
    items = enumerate_items(prompt)
    if len(items) < frames:
        return [prompt] * frames
    head, tail = _list_bounds(prompt.strip())
    head = head.strip(" ,;:-\n")
    tail = f". {tail.strip()}" if tail.strip() else ""
    return [f"{head}, {item}{tail}" if head else f"{item}{tail}" for item in items[:frames]]

"""Reference images as IP-Adapter tokens: a CLIP image encoder, the adapter's image
projection and its per-layer key/value weights, built (``tiny``, ``sdxl-random``) or loaded
(real weights).

Real weights sit next to the SDXL weights::

    $XSD_MODEL_PATH/ip_adapter/
        image_encoder/                 CLIPVisionModelWithProjection (config.json + weights)
        ip-adapter_sdxl.safetensors    image_proj.* and ip_adapter.<n>.to_k_ip/to_v_ip.weight

for example h94/IP-Adapter's ``sdxl_models/image_encoder`` (OpenCLIP ViT-bigG) with
``sdxl_models/ip-adapter_sdxl.safetensors``. Other pairs of the same kind work under the
same names (the ViT-H encoder ``models/image_encoder`` with ``ip-adapter_sdxl_vit-h``, or
the Plus adapters, which read the encoder's hidden states). Without that directory the
model serves text-only requests, and a request with references fails with
:class:`ModelUnavailable` instead of silently ignoring them.

A plain adapter's projection is diffusers' public ``ImageProjection``, built to the
checkpoint's shapes and loaded with ``load_state_dict``. A Plus adapter's resampler goes
through a private method of diffusers' ``UNet2DConditionLoadersMixin``,
``_convert_ip_adapter_image_proj_to_diffusers``, the code ``pipe.load_ip_adapter`` runs:
diffusers has no public converter from the original checkpoint's names (``to_kv`` split
into ``to_k`` and ``to_v``, the feed-forward and norm layers renamed, the heads read from a
shape), and a copy of those renames would be one more loader to keep in step with
diffusers'. A test loads a Plus checkpoint through it, so an upgrade that moves it fails
there. The public ``pipe.load_ip_adapter`` is no alternative: it replaces the UNet's
attention processors with diffusers' scalar-scale ones and makes every UNet call require
image embeddings, while ours are per row (:mod:`pipeline.ip_adapter`) and text-only calls
must stay as they are.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

from .errors import ModelUnavailable
from .ip_adapter import AdapterLayers, cross_attention_layers

__all__ = [
    "ADAPTER_DIR",
    "ADAPTER_FILE",
    "ENCODER_DIR",
    "ReferenceModels",
    "load_references",
    "random_adapter",
    "read_adapter",
    "tiny_references",
    "sdxl_random_references",
    "weights_references",
    "write_adapter",
]

log = logging.getLogger(__name__)

ADAPTER_DIR = "ip_adapter"
ADAPTER_FILE = "ip-adapter_sdxl.safetensors"
ENCODER_DIR = "image_encoder"
# Image tokens per reference of a plain (not Plus) IP-Adapter.
_TOKENS = 4

AdapterState = dict[str, dict[str, torch.Tensor]]


class ReferenceModels(torch.nn.Module):
    """Everything that turns reference images into attention inputs."""

    def __init__(
        self,
        image_encoder: CLIPVisionModelWithProjection,
        projection: torch.nn.Module,
        layers: AdapterLayers,
    ) -> None:
        super().__init__()
        if not isinstance(projection, ImageProjection | IPAdapterPlusImageProjection):
            raise ModelUnavailable(
                f"IP-Adapter projections of type {type(projection).__name__} are not "
                "supported; use a plain or Plus SDXL IP-Adapter."
            )
        self.image_encoder = image_encoder
        self.projection = projection
        self.layers = layers
        # What diffusers' `load_ip_adapter` builds for an encoder without a preprocessor
        # config, `CLIPImageProcessor(size=S, crop_size=S)`, in the PIL backend that name
        # resolves to without torchvision (a torchvision install would switch it to other
        # resize kernels; this one stays PIL's).
        size = image_encoder.config.image_size
        self.processor = CLIPImageProcessorPil(size=size, crop_size=size)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the adapter's weights."""
        return next(self.projection.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the adapter's weights."""
        return next(self.projection.parameters()).device

    def pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP's preprocessing, exactly as diffusers' pipelines apply it: RGB (over white
        where transparent), shortest side to the encoder's size (bicubic, truncated),
        centre crop, normalise; ``[R, 3, S, S]``."""
        return self.processor(list(images), return_tensors="pt").pixel_values

    def encode(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens of each image and the unconditional tokens that go with them
        (diffusers' convention: a zero image embedding, or for Plus adapters the encoder's
        view of a zero image), both ``[R, T, D]``."""
        pixels = self.pixels(images).to(self.device, self.image_encoder.dtype)
        if isinstance(self.projection, IPAdapterPlusImageProjection):

            def hidden(x: torch.Tensor) -> torch.Tensor:
                return self.image_encoder(x, output_hidden_states=True).hidden_states[-2]

            embeds, empty = hidden(pixels), hidden(torch.zeros_like(pixels))
        else:
            embeds = self.image_encoder(pixels).image_embeds
            empty = torch.zeros_like(embeds)
        # One projection call over both halves, unconditional first, as diffusers' UNet
        # projects its classifier-free guidance batch: a call per half runs the matrix
        # products at another batch size, whose kernels round the last bits differently.
        uncond, cond = self.projection(torch.cat([empty, embeds]).to(self.dtype)).chunk(2)
        return cond, uncond


def read_adapter(path: Path) -> AdapterState:
    """An IP-Adapter safetensors file, split by prefix as diffusers' ``load_ip_adapter``
    splits it."""
    state: AdapterState = {"image_proj": {}, "ip_adapter": {}}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        names = handle.keys()  # a safetensors handle is not iterable
        for key in names:
            prefix, _, rest = key.partition(".")
            if prefix in state:
                state[prefix][rest] = handle.get_tensor(key)
    if not state["image_proj"] or not state["ip_adapter"]:
        raise ModelUnavailable(f"{path} is not an IP-Adapter (no image_proj.* or ip_adapter.*).")
    return state


def _image_projection(
    unet: UNet2DConditionModel, state: dict[str, torch.Tensor]
) -> torch.nn.Module:
    """The image projection of an adapter's ``image_proj.*`` tensors (without the prefix)."""
    if "proj.weight" not in state:
        # Plus and the other kinds: see the module's docstring for why this is diffusers'
        # private converter. ReferenceModels refuses the kinds it does not support.
        return unet._convert_ip_adapter_image_proj_to_diffusers(state, low_cpu_mem_usage=False)
    # The plain IP-Adapter: one linear layer to _TOKENS tokens, then a norm. The checkpoint
    # calls the linear layer ``proj``; ImageProjection calls it ``image_embeds``.
    weight = state["proj.weight"]
    projection = ImageProjection(
        image_embed_dim=weight.shape[1],
        cross_attention_dim=weight.shape[0] // _TOKENS,
        num_image_text_embeds=_TOKENS,
    )
    projection.load_state_dict(
        {key.replace("proj.", "image_embeds.", 1): value for key, value in state.items()}
    )
    return projection


def load_references(
    unet: UNet2DConditionModel,
    image_encoder: CLIPVisionModelWithProjection,
    adapter: AdapterState,
) -> ReferenceModels:
    """The reference models of an adapter's tensors, checked against the UNet and the
    encoder."""
    projection = _image_projection(unet, adapter["image_proj"])
    models = ReferenceModels(image_encoder, projection, AdapterLayers(unet, adapter["ip_adapter"]))
    config = image_encoder.config
    if isinstance(projection, ImageProjection):
        wanted, has = projection.image_embeds.in_features, config.projection_dim
    else:
        wanted, has = projection.proj_in.in_features, config.hidden_size
    if wanted != has:
        raise ModelUnavailable(
            f"The IP-Adapter expects image features of size {wanted}; the image encoder "
            f"gives {has}. Pair the adapter with the encoder it was trained with."
        )
    return models


def random_adapter(
    unet: UNet2DConditionModel, image_embed_dim: int, generator: torch.Generator
) -> AdapterState:
    """A plain IP-Adapter with random projection weights, in checkpoint layout. The image
    key/value weights start as copies of the text ones, as IP-Adapter's training does."""
    cross = unet.config.cross_attention_dim
    bound = image_embed_dim**-0.5

    def uniform(*shape: int) -> torch.Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

    state: AdapterState = {
        "image_proj": {
            "proj.weight": uniform(_TOKENS * cross, image_embed_dim),
            "proj.bias": uniform(_TOKENS * cross),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        },
        "ip_adapter": {},
    }
    for index, name in enumerate(cross_attention_layers(unet)):
        attn = unet.get_submodule(name.removesuffix(".processor"))
        state["ip_adapter"][f"{2 * index + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        state["ip_adapter"][f"{2 * index + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    return state


def write_adapter(path: Path, state: AdapterState) -> None:
    """Save an adapter in checkpoint layout (``image_proj.*``, ``ip_adapter.*``)."""
    flat = {
        f"{prefix}.{key}": value.contiguous()
        for prefix, part in state.items()
        for key, value in part.items()
    }
    save_file(flat, str(path))


def tiny_references(unet: UNet2DConditionModel, generator: torch.Generator) -> ReferenceModels:
    """A tiny CLIP image encoder and a random adapter for ``tiny``. The adapter goes
    through a safetensors file, so the test model exercises the loading path of real
    weights."""
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=32,
        )
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ADAPTER_FILE
        write_adapter(path, random_adapter(unet, 32, generator))
        return load_references(unet, encoder, read_adapter(path))


def sdxl_random_references(
    unet: UNet2DConditionModel, generator: torch.Generator
) -> ReferenceModels:
    """For ``sdxl-random``: an image encoder of OpenCLIP ViT-H/14's size (h94's
    ``models/image_encoder``, 632 M parameters) and a random adapter of
    ``ip-adapter_sdxl_vit-h``'s shapes: the compute of real SDXL references."""
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=1024,
            hidden_act="gelu",
        )
    )
    return load_references(unet, encoder, random_adapter(unet, 1024, generator))


def weights_references(
    weights: Path, unet: UNet2DConditionModel, dtype: torch.dtype
) -> ReferenceModels | None:
    """The IP-Adapter under ``weights/ip_adapter``, or None when there is none."""
    folder = weights / ADAPTER_DIR
    if not folder.is_dir():
        log.warning(
            "%s has no %s/ directory: requests with references will fail (see "
            "pipeline/references.py for the layout).",
            weights,
            ADAPTER_DIR,
        )
        return None
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            folder / ENCODER_DIR, local_files_only=True, dtype=dtype
        )
        return load_references(unet, encoder, read_adapter(folder / ADAPTER_FILE))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Could not load the IP-Adapter from {folder}: {exc}") from exc

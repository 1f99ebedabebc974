"""Requests in, finished images out: bucket, batch, split on OOM, refine, resize, watermark.

Every request is generated at its resolution bucket with the others of that bucket, then
upscaled and refined to its output size (:mod:`pipeline.refine`), resized to the exact
pixels and marked if asked.

A request's references become IP-Adapter inputs with the roles its prompt names
(:mod:`pipeline.roles`); a sequential request's frames get one prompt each
(:func:`pipeline.prompts.frame_prompts`) and a group id, so that they run together with
shared self-attention (:mod:`pipeline.consistency`) and are never split apart.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from .acceleration import Acceleration
from .components import build_components
from .errors import InvalidInput, PipelineError, RequestCancelled
from .geometry import Size
from .progress import ProgressCallback, StepTally
from .prompts import frame_prompts
from .refine import Refiner, refine_steps
from .registry import ModelSpec
from .request import MAX_REFERENCES, GenerationRequest
from .roles import parse_roles
from .sdxl import (
    AdvanceCallback,
    CancelCheck,
    ReferenceInput,
    Sample,
    SDXLPipeline,
    StepCallback,
)
from .watermark import add_watermark

__all__ = [
    "BatchOutcome",
    "ImageGenerator",
    "RequestCheck",
    "load_generator",
    "pick_device",
    "split_point",
]

log = logging.getLogger(__name__)

# Per request: its images, or the error that stopped it.
BatchOutcome = list[Image.Image] | PipelineError
# Asked between denoising steps with a request id: True once its work is no longer wanted.
RequestCheck = Callable[[str], bool]


def pick_device(device: str | None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ImageGenerator:
    """A loaded model that turns requests into images."""

    def __init__(self, spec: ModelSpec, pipeline: SDXLPipeline) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.refiner = Refiner(pipeline, base_resolution=spec.base_resolution)

    def check_inputs(self, request: GenerationRequest) -> None:
        """Fail before any work, naming the argument and its value: the request's own
        bounds here, what its samples carry (guidance, prompt, references and the adapter
        they need) through the pipeline's own check."""
        if request.width <= 0 or request.height <= 0:
            raise InvalidInput(
                f"width and height must be positive; got {request.width}x{request.height}."
            )
        if not request.seeds:
            raise InvalidInput("seeds must name at least one image.")
        if len(request.references) > MAX_REFERENCES:
            raise InvalidInput(
                f"references must be at most {MAX_REFERENCES}; got {len(request.references)}."
            )
        bucket = self.bucket(request)
        steps = request.steps or self.spec.steps
        self.pipeline.check_inputs(self.samples(request), bucket.width, bucket.height, steps)

    def bucket(self, request: GenerationRequest) -> Size:
        """The resolution the request is generated at before resizing."""
        return self.spec.bucket(request.width, request.height)

    def schedule(self, request: GenerationRequest) -> int:
        """The denoising steps each of the request's images runs: its bucket's, then the
        refinement's when its output size gains from one (2K, 4K)."""
        steps = request.steps or self.spec.steps
        size = self.refiner.working_size(request.width, request.height)
        if self.refiner.needed(self.bucket(request), size):
            return steps + refine_steps(steps)
        return steps

    def samples(self, request: GenerationRequest, *, group: int = 0) -> list[Sample]:
        """The request's images as pipeline samples, in seed order. Every sample carries
        the request's references with the roles the prompt gives them; the frames of a
        sequential request also carry their own prompt and ``group``, which must differ
        from every other sequential request's in the batch."""
        roles = parse_roles(request.prompt, len(request.references))
        references = tuple(
            ReferenceInput(image, role)
            for image, role in zip(request.references, roles, strict=True)
        )
        if not request.sequential:
            return [
                Sample(request.prompt, seed, request.guidance_scale, references)
                for seed in request.seeds
            ]
        prompts = frame_prompts(request.prompt, len(request.seeds))
        return [
            Sample(prompt, seed, request.guidance_scale, references, group=group)
            for prompt, seed in zip(prompts, request.seeds, strict=True)
        ]

    def generate(
        self, request: GenerationRequest, *, on_step: StepCallback | None = None
    ) -> list[Image.Image]:
        """One request's images, in seed order."""
        (outcome,) = self.generate_batch([request], on_step=on_step)
        if isinstance(outcome, PipelineError):
            raise outcome
        return outcome

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        cancelled: RequestCheck | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> list[BatchOutcome]:
        """Several requests, sharing forward passes where their bucket and step count
        agree. Each request gets its images or its own error: an invalid request, or one
        the model fails on, does not fail its neighbours. A request for which
        ``cancelled`` turns true leaves the batch at the next denoising step and gets
        :class:`RequestCancelled`; the others go on as they would have without it.
        ``on_progress`` hears each request's steps (see :mod:`pipeline.progress`)."""
        tally = StepTally(on_progress) if on_progress is not None else None
        outcomes: list[BatchOutcome | None] = [None] * len(requests)
        groups: dict[tuple[Size, int], list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            try:
                self.check_inputs(request)
            except PipelineError as exc:
                outcomes[index] = exc
                continue
            steps = request.steps or self.spec.steps
            groups[(self.bucket(request), steps)].append(index)
        for (bucket, steps), members in groups.items():
            for index, images in self._run_group(
                [(i, requests[i]) for i in members], bucket, steps, on_step, cancelled, tally
            ):
                outcomes[index] = images
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    def _run_group(
        self,
        members: list[tuple[int, GenerationRequest]],
        bucket: Size,
        steps: int,
        on_step: StepCallback | None,
        cancelled: RequestCheck | None,
        tally: StepTally | None,
    ) -> list[tuple[int, BatchOutcome]]:
        # A request's position is its group id: unique within the batch.
        per_request = [
            self.samples(request, group=position) for position, (_, request) in enumerate(members)
        ]
        on_advance = None
        if tally is not None:
            # Counted afresh when a failed batch is run again one request at a time.
            for (_, request), samples in zip(members, per_request, strict=True):
                tally.add(request.request_id, samples, self.schedule(request))
            on_advance = tally.advanced
        flat = [sample for group in per_request for sample in group]
        outputs = [
            request.size
            for (_, request), samples in zip(members, per_request, strict=True)
            for _ in samples
        ]
        stopped = _stopped_requests(members, cancelled)
        check = _sample_check(members, per_request, cancelled)
        try:
            latents = self._split_on_oom(
                flat,
                lambda rows: list(
                    self.pipeline.latents(
                        flat[rows],
                        width=bucket.width,
                        height=bucket.height,
                        steps=steps,
                        on_step=on_step,
                        cancelled=check,
                        on_advance=on_advance,
                    )
                ),
            )
            # Requests stopped while they were denoised are neither refined nor decoded.
            gone = stopped()
            kept = [
                row
                for position in range(len(members))
                if position not in gone
                for row in _rows_of(per_request, position)
            ]
            raw = self._images(
                [flat[row] for row in kept],
                [latents[row] for row in kept],
                [outputs[row] for row in kept],
                bucket,
                steps,
                on_step,
                check,
                on_advance,
            )
        except Exception as exc:
            if len(members) == 1:
                if not isinstance(exc, PipelineError):
                    log.exception("generation failed")
                    exc = PipelineError(f"The model failed ({type(exc).__name__}: {exc}).")
                return [(members[0][0], exc)]
            # Find the culprit: run each request alone so the others still succeed.
            log.warning("batch of %d requests failed (%r); retrying one by one", len(members), exc)
            return [
                outcome
                for member in members
                for outcome in self._run_group([member], bucket, steps, on_step, cancelled, tally)
            ]
        images_of = dict(zip(kept, raw, strict=True))
        finished = stopped()
        results: list[tuple[int, BatchOutcome]] = []
        for position, (index, request) in enumerate(members):
            if position in finished:
                results.append((index, RequestCancelled(f"{request.request_id} was stopped.")))
                continue
            images = [images_of[row] for row in _rows_of(per_request, position)]
            if request.watermark:
                images = [add_watermark(image) for image in images]
            results.append((index, images))
        return results

    def _images(
        self,
        samples: list[Sample],
        latents: list[torch.Tensor],
        outputs: list[Size],
        bucket: Size,
        steps: int,
        on_step: StepCallback | None,
        cancelled: CancelCheck | None,
        on_advance: AdvanceCallback | None,
    ) -> list[Image.Image]:
        """The samples' images at their ``outputs`` sizes from their bucket latents:
        upscaled and refined at their working size where that gains detail, in one pass
        per working size (a bucket pass may hold 2K and 4K requests of one aspect ratio),
        else decoded and resized."""
        sizes = [self.refiner.working_size(output.width, output.height) for output in outputs]
        images: list[Image.Image | None] = [None] * len(samples)
        for size in dict.fromkeys(sizes):
            rows = [index for index, wanted in enumerate(sizes) if wanted == size]
            part = [samples[index] for index in rows]
            ends = [outputs[index] for index in rows]
            bases = torch.stack([latents[index] for index in rows])
            if self.refiner.needed(bucket, size):
                done = self._split_on_oom(
                    part,
                    lambda chunk, size=size, part=part, bases=bases, ends=ends: self.refiner(
                        part[chunk],
                        bases[chunk],
                        width=size.width,
                        height=size.height,
                        steps=steps,
                        outputs=ends[chunk],
                        on_step=on_step,
                        cancelled=cancelled,
                        on_advance=on_advance,
                    ),
                )
            else:
                done = self.pipeline.decode(bases, sizes=ends)
            for index, image in zip(rows, done, strict=True):
                images[index] = image
        return images  # type: ignore[return-value]

    def _split_on_oom(
        self,
        samples: list[Sample],
        run: Callable[[slice], list[Image.Image]],
        start: int = 0,
        stop: int | None = None,
    ) -> list[Image.Image]:
        """``run`` on the slice of ``samples`` from ``start`` to ``stop`` (all of them by
        default); on out-of-memory, on two parts of about half those samples each, never
        separating the frames of one sequential request (they attend to one another, so
        they only exist together)."""
        stop = len(samples) if stop is None else stop
        try:
            return run(slice(start, stop))
        except torch.cuda.OutOfMemoryError as exc:
            cut = split_point(samples[start:stop])
            if cut is None:
                if stop - start == 1:
                    raise
                raise PipelineError(
                    f"The {stop - start} frames of a sequential request do not fit in GPU "
                    "memory together."
                ) from exc
            torch.cuda.empty_cache()
            log.warning("out of memory with %d samples; splitting in two", stop - start)
            middle = start + cut
            return self._split_on_oom(samples, run, start, middle) + self._split_on_oom(
                samples, run, middle, stop
            )


def _rows_of(per_request: list[list[Sample]], position: int) -> range:
    """The rows of the batch that hold the samples of the request at ``position``."""
    start = sum(len(samples) for samples in per_request[:position])
    return range(start, start + len(per_request[position]))


def _stopped_requests(
    members: list[tuple[int, GenerationRequest]], cancelled: RequestCheck | None
) -> Callable[[], set[int]]:
    """Positions of the members whose request has been stopped, asked anew at each call."""
    if cancelled is None:
        return set
    return lambda: {
        position for position, (_, request) in enumerate(members) if cancelled(request.request_id)
    }


def _sample_check(
    members: list[tuple[int, GenerationRequest]],
    per_request: list[list[Sample]],
    cancelled: RequestCheck | None,
) -> CancelCheck | None:
    """The pipeline's per-sample question from the caller's per-request one."""
    if cancelled is None:
        return None
    owner = {
        id(sample): request.request_id
        for (_, request), samples in zip(members, per_request, strict=True)
        for sample in samples
    }
    return lambda sample: cancelled(owner[id(sample)])


def split_point(samples: Sequence[Sample]) -> int | None:
    """The index nearest the middle at which ``samples`` can be cut with no group on both
    sides; None when there is none (a single sample, or a single group)."""
    spans: dict[int, tuple[int, int]] = {}
    for index, sample in enumerate(samples):
        if sample.group is not None:
            spans[sample.group] = (spans.get(sample.group, (index, index))[0], index)
    cuts = [
        index
        for index in range(1, len(samples))
        if all(not first < index <= last for first, last in spans.values())
    ]
    return min(cuts, key=lambda index: abs(2 * index - len(samples)), default=None)


def load_generator(
    spec: ModelSpec, *, device: str | None = None, acceleration: Acceleration | None = None
) -> ImageGenerator:
    """Build or load ``spec``'s model on a device, at the alias's precision unless
    ``acceleration`` sets one (``auto``: float16 on CUDA, float32 on the CPU)."""
    options = acceleration or Acceleration()
    target = pick_device(device)
    dtype = options.torch_dtype(target, spec.dtype)
    components = build_components(spec, dtype=dtype)
    return ImageGenerator(
        spec, SDXLPipeline(components, device=target, dtype=dtype, acceleration=options)
    )

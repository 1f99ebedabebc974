"""The pipeline's exceptions, one hierarchy.

::

    PipelineError
    ├── ModelUnavailable    an alias that is not registered, or weights that cannot load
    ├── InvalidInput        a request the pipeline cannot run (sizes, seeds, guidance, prompt)
    ├── InvalidImage        reference bytes that are not a usable image
    └── RequestCancelled    a request whose work was stopped while it ran
"""

from __future__ import annotations

__all__ = ["PipelineError", "ModelUnavailable", "InvalidInput", "InvalidImage", "RequestCancelled"]


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose. Messages are full sentences."""


class ModelUnavailable(PipelineError):
    """The model alias is unknown, or its weights cannot be loaded."""


class InvalidInput(PipelineError):
    """A generation request that fails the pipeline's own checks."""


class InvalidImage(PipelineError):
    """Bytes that do not decode to an acceptable image."""


class RequestCancelled(PipelineError):
    """The caller stopped a request while it ran; it has no images."""

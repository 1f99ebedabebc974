"""Inference: the model registry and the SDXL-class pipeline. Inputs in, PIL images out.

Knows nothing of HTTP, Redis or object storage.
"""

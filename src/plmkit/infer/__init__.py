"""Inference: generation, task pipelines and the HTTP server."""

from plmkit.infer.generation import GenerationConfig, generate, generate_text, stream_text
from plmkit.infer.pipeline import pipeline

__all__ = ["GenerationConfig", "generate", "generate_text", "pipeline", "stream_text"]

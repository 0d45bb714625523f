"""kvplan: exact KV-cache sizing, GPU capacity planning and on-device validation for LLMs."""

__version__ = "0.1.0"

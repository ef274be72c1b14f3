"""Align-to-Distill: attention-alignment knowledge distillation for translation Transformers."""
__version__ = "0.1.0"

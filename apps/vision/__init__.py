"""Robust fine-tuning of CLIP-style image-text models under distribution shift.

``python -m apps.vision.train`` (no arguments): zero-shot, fine-tune and WiSE-FT on the
embedded MNIST shift benchmark, then print the ID / OOD table. ``python -m
apps.vision.benchmark`` runs the whole method table over 3 seeds. See docs/vision.md.
"""

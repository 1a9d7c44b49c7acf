"""Shared fine-tuning core: adapters, regularizers, continual learning, merging and training."""

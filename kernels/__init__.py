"""Fused Triton kernels, each with a pure-PyTorch reference and a dispatcher.

Depends only on torch and triton. The kernels (fused LoRA, multi-adapter LoRA, fused
linear cross-entropy) land with their own issue; until then the adapters compute with
plain PyTorch (see ``core.adapters.lora`` and ``core.adapters.routing``).
"""

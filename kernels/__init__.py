"""Fused kernels, each with a pure-PyTorch reference, a Triton implementation and a dispatcher.

Depends only on torch and triton. The ops: fused LoRA linear and its DoRA variant
(:mod:`kernels.lora`), multi-adapter LoRA (:mod:`kernels.multi_lora`) and fused linear
cross-entropy (:mod:`kernels.cross_entropy`). :mod:`kernels.dispatch` picks the backend,
:mod:`kernels.amp` makes the ops work under autocast, and ``python -m
kernels.compile_check`` compiles every Triton kernel for GPU targets without a GPU.
"""

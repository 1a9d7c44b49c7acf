"""Fused kernels, each with a pure-PyTorch reference, a Triton implementation and a dispatcher.

Depends only on torch and triton. The ops: fused LoRA linear and its DoRA variant
(:mod:`fused_kernels.lora`), multi-adapter LoRA (:mod:`fused_kernels.multi_lora`) and fused linear
cross-entropy (:mod:`fused_kernels.cross_entropy`). :mod:`fused_kernels.dispatch` picks the backend,
:mod:`fused_kernels.amp` makes the ops work under autocast, and ``python -m
fused_kernels.compile_check`` compiles every Triton kernel for GPU targets without a GPU.
"""

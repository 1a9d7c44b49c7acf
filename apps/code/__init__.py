"""Code LLM fine-tuning: multitask data with FIM, the task-balanced loss, sandboxed pass@k.

``python -m apps.code.train`` pre-trains (once, cached) a small Llama-style base on the
Python standard library, fine-tunes LoRA adapters on five code tasks with MFTCoder's
task-balanced loss, and reports per-task loss, FIM exact match, HumanEval pass@k and
forgetting. See ``docs/code.md``.
"""

"""The core's own example app: LoRA on a small MLP that classifies scikit-learn's digits.

Run it with ``python -m core.examples.train`` (or ``make run``).
"""

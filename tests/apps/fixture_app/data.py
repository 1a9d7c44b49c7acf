"""The fixture app's data: scikit-learn's digits, through the example app's data module."""

from core.examples.data import DigitsDataModule

__all__ = ["DigitsDataModule"]

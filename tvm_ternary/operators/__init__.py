"""Operators (TE compute): conv2d and dense over bit-packed planes or FGQ bytes."""

from .spec import OPERATORS, OperatorSpec

__all__ = ["OPERATORS", "OperatorSpec"]

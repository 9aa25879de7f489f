"""Errors the quantizer raises for bad input; each renders as one line for the user."""

from __future__ import annotations

from collections.abc import Iterable


class QuantInputError(ValueError):
    """Bad user input: a parameter value, a path, a file's content. Rendered as one line."""

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.message = message
        super().__init__(f"{param}: {message}")


def invalid_value(param: str, value: object, valid: str | Iterable[object]) -> QuantInputError:
    """A QuantInputError for a value outside the valid set; names the valid values."""
    if not isinstance(valid, str):
        valid = ", ".join(str(v) for v in valid)
    return QuantInputError(param, f"invalid value {value!r}; valid values: {valid}")

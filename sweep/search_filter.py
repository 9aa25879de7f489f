"""Values inside MLflow search filter strings."""

from __future__ import annotations


def quoted(value: str) -> str:
    """``value`` as a quoted string literal of an MLflow filter (``tags.x = 'it\\'s'``)."""
    return "'" + value.replace("'", "\\'") + "'"

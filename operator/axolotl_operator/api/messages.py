"""Validation messages a person can act on: the constraint, what was written, and a value that works.

pydantic's own wording ("Input should be greater than or equal to 1") names neither the example nor the
YAML trap behind many type errors; the CLI, the admission webhook and `status.message` all print these.
"""

from __future__ import annotations

import re
from typing import Any

from .issues import value_kind
from .secrets_guard import redact, token_shaped

# Only short strings are repeated, never token-shaped ones: a token pasted where a mapping belongs
# (`secrets: {hfToken: hf_...}`) is not caught by the secrets scan, which reads values, not wrong shapes.
MAX_ECHO = 24
EXAMPLE_IN_DESCRIPTION = re.compile(r"\be\.g\.\s+([^\s,;]+?)[.,;)]?(?:\s|$)")


def example_from(description: str | None) -> str | None:
    """The 'e.g. 2e-4' a field's description gives, if any."""
    match = EXAMPLE_IN_DESCRIPTION.search(description or "")
    return match.group(1) if match else None


def bound_example(kind: str, bound: Any) -> Any:
    """A value that meets a one-sided bound: the bound itself when inclusive, a step inside when not."""
    if not isinstance(bound, int | float) or kind in {"greater_than_equal", "less_than_equal"}:
        return bound
    if kind == "greater_than":
        return bound + 1
    return bound - 1 if bound > 1 else bound / 2


def echo(value: Any) -> str:
    """What was written, for a message: numbers and booleans as they are, short harmless strings quoted,
    anything else by its kind ('a string', 'a mapping')."""
    if isinstance(value, bool | int | float):
        return repr(value)[:MAX_ECHO]
    harmless = isinstance(value, str) and not token_shaped(value) and redact(value) == value
    if harmless and len(value) <= MAX_ECHO:
        return repr(value)
    return value_kind(value)


def humanize(error: Any, key: str, example: str | None) -> str | None:
    """A message for one pydantic error (a dict from `ValidationError.errors()`), or None to keep its own.

    `key` is the field's name as written (for `key: value` examples), `example` a value known to work.
    """
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f"got {echo(value)}"

    def with_example(message: str, fallback: Any = None) -> str:
        shown = example if example is not None else fallback
        return f"{message}, {got}; e.g. {key}: {shown}" if shown is not None else f"{message}, {got}"

    bounds = {
        "greater_than_equal": ("ge", "at least"),
        "greater_than": ("gt", "greater than"),
        "less_than_equal": ("le", "at most"),
        "less_than": ("lt", "less than"),
    }
    if kind in bounds:
        name, words = bounds[kind]
        return with_example(f"must be {words} {ctx.get(name)}", bound_example(kind, ctx.get(name)))
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return with_example("must be a whole number", 1)
    if kind in {"float_parsing", "float_type"}:
        return with_example("must be a number", 1.0)
    if kind in {"bool_parsing", "bool_type"}:
        return f"must be true or false, {got}"
    shape = f"got {value_kind(value)}"  # a wrong shape is never quoted: it may be a pasted token
    if kind == "string_type":
        return f"must be a string, {shape}; quote it if YAML read it as a number or a date"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"must be a mapping (key: value lines), {shape}"
    if kind == "list_type":
        return f"must be a list (lines starting with '- '), {shape}"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}, {got}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "missing":
        return f"required; e.g. {key}: {example}" if example else "required"
    return None

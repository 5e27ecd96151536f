"""Config values from YAML: conversion to a settings field's type hint, and the words errors use for them."""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal


def closest(name: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else f" (valid: {', '.join(valid)})"


def convert(value: Any, hint: Any) -> Any:
    """`value` (from YAML) as the field type `hint`; TypeError/ValueError when it cannot be."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        return _convert_union(value, [a for a in args if a is not type(None)])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"not one of {args}")
        return value
    if origin is tuple:
        return _convert_tuple(value, args)
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError("not a bool")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("not an int")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError("not a number")
        number = float(value)  # YAML reads 1e-6 (no dot) as a string
        if not math.isfinite(number):  # nan, inf, and 1e400 (which overflows to inf)
            raise ValueError("not a finite number")
        return number
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise TypeError("not a string")
        return str(value)
    raise TypeError(f"unsupported field type {hint}")


def _convert_union(value: Any, options: list[Any]) -> Any:
    """`value` as the first of the union's types that takes it (bool | Literal["new_class"])."""
    error: Exception = TypeError("no type")
    for option in options:
        try:
            return convert(value, option)
        except (TypeError, ValueError) as err:
            error = err
    raise error


def _convert_tuple(value: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError("not a list")
    if len(value) != len(args):
        raise ValueError(f"needs {len(args)} items")
    return tuple(convert(v, a) for v, a in zip(value, args, strict=True))


def type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"

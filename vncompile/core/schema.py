"""Settings declared once, as dataclass fields: validation and conversion derive from the declaration.

A field declared with ``setting(kind, ...)`` can be set from a YAML document (device configs,
the CI matrix) and, when it names a ``flag``, from the command line. Its ``Kind`` says what a
value must be (``expected``, for the one-line error), converts a YAML value (``from_value``)
and a command-line text (``from_text``). ``from_document`` builds the dataclass from a mapping:
an unknown key, a missing required field or a wrong value is one line naming where and which.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError
from .units import parse_memory_size

T = TypeVar("T")
REQUIRED: Any = dataclasses.MISSING
SCHEMA_KEY = "vncompile.schema"


class Kind:
    """What one setting's values are."""

    expected: str = "a value"

    def from_value(self, value: Any) -> Any:
        """A YAML value -> the field's value; ``ValueError`` if it is not one."""
        return value

    def from_text(self, text: str) -> Any:
        """A command-line text -> the field's value; ``ValueError`` if it is not one."""
        return self.from_value(text)

    def to_value(self, value: Any) -> Any:
        """The field's value -> a value ``from_value`` reads back (requests travel to workers as JSON)."""
        return value


class Text(Kind):
    def __init__(self, expected: str = "a non-empty string") -> None:
        self.expected = expected

    def from_value(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError
        return value


class OneOf(Kind):
    def __init__(self, choices: tuple[str, ...]) -> None:
        self.choices = choices
        self.expected = f"one of {', '.join(choices)}"

    def from_value(self, value: Any) -> str:
        if value not in self.choices:
            raise ValueError
        return value


class Flag(Kind):
    expected = "true or false"

    def from_value(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError
        return value


class Number(Kind):
    """A number between bounds: ``low`` (excluded with ``low_open``) and ``high``; an int with ``integer``."""

    def __init__(self, expected: str, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, integer: bool = False) -> None:
        self.expected, self.low, self.high, self.low_open, self.integer = expected, low, high, low_open, integer

    def from_value(self, value: Any) -> float | int:
        kinds = (int,) if self.integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            raise ValueError
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise ValueError
        if self.high is not None and value > self.high:
            raise ValueError
        return int(value) if self.integer else float(value)

    def from_text(self, text: str) -> float | int:
        try:
            return self.from_value(int(text) if self.integer else float(text))
        except (TypeError, ValueError):
            raise ValueError from None


def PositiveInt(expected: str = "a positive integer") -> Number:  # noqa: N802 - reads like the kinds it sits among
    return Number(expected, low=1, integer=True)


def PositiveNumber(expected: str = "a positive number") -> Number:  # noqa: N802
    return Number(expected, low=0, low_open=True)


def NonNegativeNumber(expected: str = "a number >= 0") -> Number:  # noqa: N802
    return Number(expected, low=0)


def UnitFraction() -> Number:  # noqa: N802
    return Number("a number in (0, 1]", low=0, low_open=True, high=1)


class FloatTriple(Kind):
    """Three numbers (per RGB channel): ``[0.5, 0.5, 0.5]`` in a config, ``0.5,0.5,0.5`` on the command line."""

    def __init__(self, expected: str, positive: bool = False) -> None:
        self.expected, self.positive = expected, positive

    def from_value(self, value: Any) -> tuple[float, float, float]:
        if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ValueError
        numbers = (float(value[0]), float(value[1]), float(value[2]))
        if not all(math.isfinite(n) for n in numbers) or (self.positive and min(numbers) <= 0):
            raise ValueError
        return numbers

    def from_text(self, text: str) -> tuple[float, float, float]:
        try:
            return self.from_value([float(part) for part in str(text).split(",")])
        except (TypeError, ValueError):
            raise ValueError from None


class IntList(Kind):
    """A non-empty list of positive integers; on the command line ``256,384,512`` (no empty items)."""

    def __init__(self, expected: str = "a non-empty list of positive integers") -> None:
        self.expected = expected

    def from_value(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise ValueError
        return tuple(PositiveInt().from_value(v) for v in value)

    def from_text(self, text: str) -> tuple[int, ...]:
        parts = [part.strip() for part in str(text).split(",")]
        if not parts or any(not part for part in parts):
            raise ValueError
        return self.from_value([PositiveInt().from_text(part) for part in parts])


class TextList(Kind):
    """A non-empty list of strings (``a,b`` on the command line); with ``single``, one string stays a string."""

    def __init__(self, expected: str, single: bool = False) -> None:
        self.expected, self.single = expected, single

    def from_value(self, value: Any) -> str | tuple[str, ...]:
        if isinstance(value, str) and value.strip():
            return value if self.single else tuple(v.strip() for v in value.split(","))
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
            return tuple(value)
        raise ValueError

    def from_text(self, text: str) -> tuple[str, ...]:
        parts = [p.strip() for p in str(text).split(",")]
        if not all(parts):
            raise ValueError
        return tuple(parts)


class ListOf(Kind):
    def __init__(self, expected: str, item: Callable[[Any], bool] | None = None) -> None:
        self.expected, self.item = expected, item

    def from_value(self, value: Any) -> list[Any]:
        if not isinstance(value, list) or not value or (self.item and not all(self.item(v) for v in value)):
            raise ValueError
        return value


class PathKind(Kind):
    def __init__(self, expected: str = "a path") -> None:
        self.expected = expected

    def from_value(self, value: Any) -> Path:
        return Path(Text().from_value(value))


class MemorySize(Kind):
    """``1.2GB`` -> KB (``core.units``)."""

    expected = "a memory size such as 1.2GB, 900MB or 512KB"

    def from_value(self, value: Any) -> float:
        if not isinstance(value, str):
            raise ValueError
        return parse_memory_size(value)

    def to_value(self, value: float) -> str:
        return f"{value!r}KB"  # KB as a size the parser reads back exactly


class Mapping_(Kind):
    expected = "a mapping"

    def from_value(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError
        return value


@dataclass(frozen=True)
class Setting:
    kind: Kind
    help: str = ""
    flag: str | None = None  # the command-line option, where one sets it
    nested: type | None = None  # a dataclass of settings (a mapping in the document)
    # What a value changes, so that the cache keys derive from the declarations: "onnx" (the target-independent
    # graph and its reference: every key), "build" (the target's artifact: the build's key), "nothing" (where
    # files are kept, say: no key).
    affects: str = "build"


AFFECTS = ("reference", "onnx", "build", "nothing")


def setting(kind: Kind, default: Any = REQUIRED, *, help: str = "", flag: str | None = None,
            nested: type | None = None, affects: str = "build") -> Any:
    """A dataclass field that documents, the command line, validation and the cache keys all read."""
    if affects not in AFFECTS:
        raise ValueError(f"affects must be one of {AFFECTS}, got {affects!r}")
    metadata = {SCHEMA_KEY: Setting(kind, help, flag, nested, affects)}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def settings_of(cls: type) -> dict[str, tuple[dataclasses.Field, Setting]]:
    """The declared settings of a dataclass, by field name."""
    return {f.name: (f, f.metadata[SCHEMA_KEY]) for f in dataclasses.fields(cls) if SCHEMA_KEY in f.metadata}


def convert(name: str, spec: Setting, value: Any, where: str, *, text: bool = False) -> Any:
    """One value of one setting, converted, or a one-line error naming ``where`` and the field."""
    if spec.nested is not None:
        return from_document(spec.nested, value, f"{where}: {name}")
    try:
        return spec.kind.from_text(value) if text else spec.kind.from_value(value)
    except ValueError as exc:
        detail = f" ({exc})" if str(exc) and spec.kind.expected not in str(exc) else ""
        raise InputError(f"{where}: '{name}' must be {spec.kind.expected}, got {value!r}{detail}") from None


def check_keys(document: Any, known: Mapping[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise InputError(f"{where}: expected a mapping of fields, got {type(document).__name__}")
    for key in document:
        if key not in known:
            raise InputError(f"{where}: unknown key '{key}' (known: {', '.join(known)})")
    return document


def values_of(cls: type, document: Any, where: str, *, partial: bool = False) -> dict[str, Any]:
    """The converted values a document gives for ``cls``'s settings (all required ones unless ``partial``)."""
    declared = settings_of(cls)
    check_keys(document, declared, where)
    values = {}
    for name, (field, spec) in declared.items():
        if name in document:
            values[name] = convert(name, spec, document[name], where)
        elif not partial and field.default is REQUIRED and field.default_factory is REQUIRED:  # type: ignore[misc]
            raise InputError(f"{where}: missing field '{name}'")
    return values


def from_document(cls: Callable[..., T], document: Any, where: str, **fixed: Any) -> T:
    """``cls`` built from a YAML mapping (plus ``fixed`` fields no document sets)."""
    return cls(**values_of(cls, document, where), **fixed)  # type: ignore[arg-type]


def updated(instance: T, changes: Any, where: str) -> T:
    """``instance`` with the settings a (partial) mapping gives."""
    return dataclasses.replace(instance, **values_of(type(instance), changes, where, partial=True))  # type: ignore

"""Typed settings: every field declares its rule, and one helper checks it.

A settings object is a frozen dataclass whose fields carry a :class:`Rule` (``setting(rule,
default)``). Constructing it checks every field with its rule (type, range, choice, finiteness),
then the object's own cross-key rules (:meth:`Settings.check`). :meth:`Settings.from_mapping`
builds one from a mapping and refuses any key the class does not declare, so the same object
serves the config (each config group's ``_target_`` names one) and the library functions that
build it from their keyword arguments. Nothing else re-checks these values.

Each rule also knows two values it refuses (:meth:`Rule.refused`): one of the wrong type and one
of the right type but out of range. The schema test feeds them to every key of every config
option, so a key without a working rule cannot go unnoticed.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Optional

from precond.errors import ConfigError


def is_number(value: Any) -> bool:
    """An int or float that is not a bool: the one test of "a number" for configs and the files runs write."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number (:func:`is_number`) that is neither NaN nor ±inf."""
    return is_number(value) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Rule:
    """What one field accepts. ``check`` returns the value in its canonical type or raises."""

    optional: bool = False

    def expected(self) -> str:
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def canonical(self, value: Any) -> Any:
        return value

    def check(self, key: str, value: Any, fix: str = "") -> Any:
        if value is None and self.optional:
            return None
        if not self.accepts(value):
            expected = self.expected() + (" or null" if self.optional else "")
            raise ConfigError(key, expected, value, fix)
        return self.canonical(value)

    def refused(self) -> list[Any]:
        """Two values this rule refuses: a wrong type, and an out-of-range (or unknown) one."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Num(Rule):
    """A real number in [lo, hi] (ends open when asked); finite unless ``allow_inf``."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False
    allow_inf: bool = False

    def expected(self) -> str:
        finite = "" if self.allow_inf else "finite "
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"a {finite}number in {left}{self.lo}, {self.hi}{right}"
        if self.lo is not None:
            return f"a {finite}number {'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None:
            return f"a {finite}number {'<' if self.hi_open else '<='} {self.hi}"
        return f"a {finite}number"

    def accepts(self, value: Any) -> bool:
        if not is_number(value) or math.isnan(value) or (math.isinf(value) and not self.allow_inf):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))

    def canonical(self, value: Any) -> float:
        return float(value)

    def refused(self) -> list[Any]:
        out_of_range = self.lo - 1 if self.lo is not None else (self.hi + 1 if self.hi is not None else math.nan)
        return ["abc", out_of_range]


@dataclasses.dataclass(frozen=True)
class Int(Rule):
    """An integer in [lo, hi] (booleans are not integers here)."""

    lo: Optional[int] = None
    hi: Optional[int] = None
    optional: bool = False

    def expected(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"an integer in [{self.lo}, {self.hi}]"
        if self.lo is not None:
            return "a positive integer" if self.lo == 1 else f"an integer >= {self.lo}"
        return "an integer"

    def accepts(self, value: Any) -> bool:
        return is_int(value) and (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def refused(self) -> list[Any]:
        return [1.5, self.lo - 1 if self.lo is not None else self.hi + 1]


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of strings."""

    options: tuple[str, ...] = ()
    optional: bool = False

    def expected(self) -> str:
        return f"one of {list(self.options)}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.options

    def refused(self) -> list[Any]:
        return [3, "no_such_option"]


@dataclasses.dataclass(frozen=True)
class Flag(Rule):
    """true or false (not 0/1, not a string)."""

    optional: bool = False

    def expected(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def refused(self) -> list[Any]:
        return ["maybe", 2]


@dataclasses.dataclass(frozen=True)
class Text(Rule):
    """A string; ``name_like`` restricts it to a safe file-name component (letters, digits, ``-_.=,+``)."""

    optional: bool = False
    name_like: bool = False
    max_len: Optional[int] = None  # a name: 100 unless given; other text: no limit unless given
    min_len: int = 0

    _SAFE: ClassVar[frozenset] = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.=,+")

    @property
    def longest(self) -> Optional[int]:
        return self.max_len if self.max_len is not None else (100 if self.name_like else None)

    def expected(self) -> str:
        if self.name_like:
            return (f"a name of 1-{self.longest} characters from letters, digits and -_.=,+ "
                    "(it becomes part of a directory name)")
        if self.longest is not None:
            return f"a string of {self.min_len}-{self.longest} characters"
        return "a string" + (f" of at least {self.min_len} characters" if self.min_len else "")

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        if len(value) < self.min_len or (self.longest is not None and len(value) > self.longest):
            return False
        if not self.name_like:
            return True
        return 0 < len(value) and set(value) <= self._SAFE and value not in (".", "..")

    def refused(self) -> list[Any]:
        if self.name_like:
            return [[1], "../escape"]
        return [[1], 7, *(["x" * (self.longest + 1)] if self.longest is not None else []),
                *([""] if self.min_len else [])]


@dataclasses.dataclass(frozen=True)
class Seq(Rule):
    """A list of values each checked by ``item``, with ``min_len <= len <= max_len``; a tuple after checking."""

    item: Rule = dataclasses.field(default_factory=lambda: Int())
    min_len: int = 0
    max_len: Optional[int] = None
    distinct: bool = False
    optional: bool = False

    def expected(self) -> str:
        n = (f"{self.min_len}" if self.max_len == self.min_len else
             f"{self.min_len}+" if self.max_len is None else f"{self.min_len}-{self.max_len}")
        return f"a list of {n} {'distinct ' if self.distinct else ''}values, each {self.item.expected()}"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, (list, tuple)):
            return False
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            return False
        if self.distinct and len(set(map(repr, value))) < len(value):
            return False
        return all(self.item.accepts(v) for v in value)

    def canonical(self, value: Any) -> tuple:
        return tuple(self.item.canonical(v) for v in value)

    def refused(self) -> list[Any]:
        bad_item = self.item.refused()[1]
        return ["abc", [bad_item] * max(self.min_len, 1)]


@dataclasses.dataclass(frozen=True)
class Table(Rule):
    """A mapping of names to values; its content is checked by the settings object that owns it."""

    optional: bool = False

    def expected(self) -> str:
        return "a mapping of names to values"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)

    def canonical(self, value: Any) -> dict:
        return dict(value)

    def refused(self) -> list[Any]:
        return ["abc", {"no_such_key": 1}]


@dataclasses.dataclass(frozen=True)
class Nested(Rule):
    """A settings object of class ``cls``, given as one or as a mapping of its keys."""

    cls: type = type(None)
    optional: bool = False

    def expected(self) -> str:
        return f"a mapping with the keys {self.cls.keys()}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (self.cls, Mapping))

    def check(self, key: str, value: Any, fix: str = "") -> Any:
        value = super().check(key, value, fix)
        if value is None or isinstance(value, self.cls):
            return value
        try:
            return self.cls.from_mapping(value)
        except ConfigError as err:
            raise err.within(key) from None

    def refused(self) -> list[Any]:
        return ["abc", {"no_such_key": 1}]


#: the rule every learning rate obeys (the top-level ``lr`` and each preconditioner's default)
LEARNING_RATE = Num(lo=0, lo_open=True)
#: seeds every generator in torch accepts and every file format stores (int64)
SEED = Int(lo=0, hi=2**63 - 1)


def setting(rule: Rule, default: Any = dataclasses.MISSING, doc: str = "", fix: str = "", **meta) -> Any:
    """A dataclass field checked by ``rule``; ``doc`` says what it means, ``fix`` how to repair a bad value."""
    metadata = {"rule": rule, "doc": doc, "fix": fix, **meta}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple (immutable) as the default of a setting")
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every typed settings object: fields checked by their rules, then :meth:`check`."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            rule = f.metadata.get("rule")
            if rule is not None:
                object.__setattr__(self, f.name, rule.check(f.name, getattr(self, f.name), f.metadata["fix"]))
        self.check()

    def check(self) -> None:
        """Rules that join two keys of this object (override); single-key rules live in the fields."""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """Build from a mapping, refusing keys this class does not declare (errors name the key)."""
        refuse_unknown_keys(values, cls.keys(), cls.__name__)
        for f in dataclasses.fields(cls):
            if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f.name, f"a value ({f.metadata.get('doc') or 'required'})", None,
                                  f"add {f.name}=...")
        return cls(**values)

    def part(self, key: str) -> Settings:
        """The settings object behind field ``key`` when it holds nested keys (a :class:`Nested` field,
        or a :class:`Table` whose keys another settings class owns); used to find the rule of a dotted key."""
        value = getattr(self, key)
        if isinstance(value, Settings):
            return value
        raise KeyError(f"{type(self).__name__}.{key} holds no nested settings")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def refuse_unknown_keys(values: Mapping[str, Any], known: list[str], where: str) -> None:
    """A key nobody reads is a typo until proven otherwise: refuse it, suggesting the closest known key."""
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"{where} reads only these keys"
            raise ConfigError(str(key), f"one of the keys {sorted(known)}", None, hint)


def rule_of(cls: type, key: str) -> Rule:
    """The rule of field ``key`` of settings class ``cls``."""
    return next(f.metadata["rule"] for f in dataclasses.fields(cls) if f.name == key)

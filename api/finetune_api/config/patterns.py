"""Regular expressions over module paths (``targetModules``, ``feedforwardModules``):
refused at validation when they could take exponential (or high-polynomial) time.

peft matches a string ``targetModules`` with ``re.fullmatch`` against every module
path of the model, and the planner does the same on the model's shape. Python's ``re``
backtracks: ``(a+)+$`` or ``(a|ab)*c`` take time exponential in the path's length, so
one such pattern hangs the run before its first step, or the operator's planner. The
trainer matches with RE2 (linear time) where it is installed; this check is what keeps
every other matcher safe, and it runs where ``finetune validate`` and the operator's
admission run, before anything starts.

The check is syntactic, on the parsed pattern (Python's own parser), and refuses the
shapes that backtrack without bound:

* a repetition inside a repetition (``(a+)+``, ``(\\.\\w+)*``);
* a repeated alternation whose branches can start alike (``(a|ab)*``, ``(\\.a|\\.b|.c)+``);
* more than :data:`MAX_OPEN_REPEATS` open-ended repetitions (``.*a.*b.*c.*d``: time
  grows as the path's length to that power);
* backreferences, lookarounds, atomic groups and possessive repeats, which RE2 does not
  have and module paths do not need.

Module paths are dotted names (``model.layers.0.self_attn.q_proj``): a list of names,
``all-linear`` or a pattern like ``.*\\.(q|v)_proj`` never needs any of these.
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MAX_PATTERN_LENGTH = 1024
"""Longer patterns are not module selectors; bounded so that checking them is cheap."""
MAX_OPEN_REPEATS = 3
"""Open-ended repetitions one pattern may hold (``.*``, ``\\d+``, ``{2,}``): with k of
them a failed match can try about length^k splits of a path."""
_OPEN = 16
"""A repetition whose upper bound exceeds this counts as open-ended."""
_UNSUPPORTED = {
    sre.GROUPREF: "a backreference",
    sre.GROUPREF_EXISTS: "a conditional group",
    sre.ASSERT: "a lookahead or lookbehind",
    sre.ASSERT_NOT: "a negative lookahead or lookbehind",
    sre.ATOMIC_GROUP: "an atomic group",
    sre.POSSESSIVE_REPEAT: "a possessive repeat",
}
_REPEATS = {sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT}
_ANY_CHAR = frozenset({"*"})
"""A first-character set that may hold any character (``.``, ``\\w``, a negated class)."""
_FIX = "use a list of module names (e.g. [q_proj, v_proj]) or a simpler pattern such as "


class UnsafePattern(ValueError):
    """A pattern refused by :func:`check_module_pattern`, with the reason and the fix."""


def check_module_pattern(pattern: str) -> None:
    """Raise :class:`UnsafePattern` (a ValueError) when ``pattern`` is not a regular
    expression that matches module paths in bounded time; return quietly otherwise."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise UnsafePattern(
            f"is {len(pattern)} characters long, more than {MAX_PATTERN_LENGTH}; "
            + _FIX
            + r"'.*\.(q|v)_proj'"
        )
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise UnsafePattern(
            f"'{pattern}' is not a valid regular expression ({exc}); write all-linear, a "
            "list of module names such as [q_proj, v_proj], or a valid regular expression"
        ) from None
    _check(parsed, pattern, inside_repeat=False)
    opened = _open_repeats(parsed)
    if opened > MAX_OPEN_REPEATS:
        raise UnsafePattern(
            f"'{pattern}' has {opened} open-ended repetitions (.*, +, {{n,}}); more than "
            f"{MAX_OPEN_REPEATS} can take time growing as a path's length to that power; "
            + _FIX
            + r"'.*\.(q|v)_proj'"
        )


def _check(items: Any, pattern: str, inside_repeat: bool) -> None:
    for op, av in items:
        if op in _UNSUPPORTED:
            raise UnsafePattern(
                f"'{pattern}' uses {_UNSUPPORTED[op]}, which module paths do not need and "
                "the trainer's linear-time matcher does not support; " + _FIX + r"'.*\.q_proj'"
            )
        if op in _REPEATS:
            low, high, body = av
            repeated = high > 1
            if inside_repeat and low != high:
                _refuse_nested(pattern)
            if repeated and _has_variable_repeat(body):
                _refuse_nested(pattern)
            if repeated and _ambiguous_alternation(body):
                raise UnsafePattern(
                    f"'{pattern}' repeats an alternation whose branches can match the same "
                    "text, which can take exponential time on a long path; make the "
                    "branches start differently, or " + _FIX + r"'.*\.(q|v)_proj'"
                )
            _check(body, pattern, inside_repeat or repeated)
        elif op == sre.SUBPATTERN:
            _check(av[-1], pattern, inside_repeat)
        elif op == sre.BRANCH:
            for branch in av[1]:
                _check(branch, pattern, inside_repeat)


def _refuse_nested(pattern: str) -> None:
    raise UnsafePattern(
        f"'{pattern}' repeats a repetition (like (a+)+), which can take exponential time on "
        "a path it does not match; " + _FIX + r"'.*\.(q|v)_proj'"
    )


def _has_variable_repeat(items: Any) -> bool:
    for op, av in items:
        if op in _REPEATS and av[0] != av[1]:
            return True
        if op in _REPEATS and _has_variable_repeat(av[2]):
            return True
        if op == sre.SUBPATTERN and _has_variable_repeat(av[-1]):
            return True
        if op == sre.BRANCH and any(_has_variable_repeat(b) for b in av[1]):
            return True
    return False


def _ambiguous_alternation(items: Any) -> bool:
    """Whether a repeated body holds an alternation (``a|ab``, ``[ab]`` is one class,
    not an alternation) two of whose branches can start with the same character, or one
    of which can match nothing."""
    for op, av in items:
        if op == sre.SUBPATTERN:
            if _ambiguous_alternation(av[-1]):
                return True
        elif op == sre.BRANCH:
            firsts = [_first_chars(branch) for branch in av[1]]
            if any(f is None for f in firsts):
                return True
            seen: set[str] = set()
            for chars in firsts:
                assert chars is not None
                if chars & seen or (chars >= _ANY_CHAR and seen) or seen >= _ANY_CHAR:
                    return True
                seen |= chars
    return False


def _first_chars(items: Any) -> frozenset[str] | None:
    """The characters a match of ``items`` can start with (``*``: any); None when it can
    match the empty string."""
    for op, av in items:
        if op == sre.LITERAL:
            return frozenset({chr(av)})
        if op == sre.IN:
            out: set[str] = set()
            for kind, value in av:
                if kind == sre.LITERAL:
                    out.add(chr(value))
                elif kind == sre.RANGE and value[1] - value[0] < 256:
                    out |= {chr(c) for c in range(value[0], value[1] + 1)}
                else:  # a category, a negation or a wide range: anything, to be safe
                    return _ANY_CHAR
            return frozenset(out)
        if op == sre.SUBPATTERN:
            inner = _first_chars(av[-1])
            if inner is not None:
                return inner
            continue
        if op in _REPEATS:
            inner = _first_chars(av[2])
            # An optional part: what follows may start the match too (said: anything).
            return inner if av[0] > 0 and inner is not None else None
        if op == sre.AT:
            continue  # ^, $, \b match no character
        return _ANY_CHAR  # ., NOT_LITERAL, CATEGORY, BRANCH...
    return None


def _open_repeats(items: Any) -> int:
    count = 0
    for op, av in items:
        if op in _REPEATS:
            count += int(av[1] > _OPEN) + _open_repeats(av[2])
        elif op == sre.SUBPATTERN:
            count += _open_repeats(av[-1])
        elif op == sre.BRANCH:
            count += max((_open_repeats(b) for b in av[1]), default=0)
    return count

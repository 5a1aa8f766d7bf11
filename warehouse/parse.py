"""Numbers and names from outside (command lines, URLs, manifests, file headers), parsed in one place.

``int()`` alone takes ``"١٢"``, ``" 3_0"`` and, slowly or not at all, a number of 5,000 digits
(Python refuses more than 4,300 with a ``ValueError`` of its own); ``float()`` takes ``nan``,
``inf`` and ``"1_0"``. Every number a person or a file hands to the atlas goes through
``bounded_int`` / ``finite_float`` instead: ASCII only, at most ``MAX_DIGITS`` digits checked
*before* converting, and the accepted range named in the error. Names (layers, run ids) are matched
whole by a pattern, so a trailing newline or a markdown payload never passes as a name.
"""

from __future__ import annotations

import math
import re

from warehouse.errors import AtlasError

#: Digits accepted in an integer before ``int()`` sees it: int64 has 19, so 20 leaves room for a sign-less
#: overflow to be reported as out of range rather than as malformed.
MAX_DIGITS = 20
#: Characters accepted in a decimal number ("-1.2345e-12" is 11); longer text is not a number anyone means.
MAX_FLOAT_CHARS = 64
#: Seeds, everywhere (``--seed``, ``--seeds``, ``compute experiment``, ``runs.seed``): a non-negative int64.
SEED_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
#: A layer name: a module path as torch and torch.fx write it (``fc1``, ``layer1.0.relu_1``).
LAYER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class ParseError(AtlasError, ValueError):
    """A number or name from outside that is malformed or out of range; the message names the range."""


def shown(text: object, limit: int = 40) -> str:
    """``text`` quoted for a message, cut to ``limit`` characters (a 5,000-digit value is not repeated)."""
    s = str(text)
    return repr(s) if len(s) <= limit else f"{s[:limit]!r}… ({len(s):,} characters)"


def bounded_int(text: str, lo: int, hi: int, what: str) -> int:
    """The integer ``text`` writes in ASCII digits, in ``lo..hi``; else ``ParseError`` naming the range."""
    t = str(text).strip()
    expect = f"expected {what}: a whole number from {lo:,} to {hi:,} in ASCII digits"
    if not _INT.fullmatch(t):
        raise ParseError(f"{expect}, got {shown(text)}.")
    digits = t.lstrip("+-").lstrip("0")
    if len(digits) > MAX_DIGITS:
        raise ParseError(f"{expect}, got a number of {len(digits):,} digits.")
    value = -int(digits or "0") if t.startswith("-") else int(digits or "0")
    if not lo <= value <= hi:
        raise ParseError(f"{expect}, got {value:,}.")
    return value


def finite_float(text: str, lo: float = -math.inf, hi: float = math.inf, what: str = "the value",
                 open_lo: bool = False) -> float:
    """A finite decimal number in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``): no nan, no inf, ASCII only."""
    t = str(text).strip()
    bounds = [f"{'above' if open_lo else 'at least'} {lo:g}" if math.isfinite(lo) else "",
              f"at most {hi:g}" if math.isfinite(hi) else ""]
    expect = f"expected {what}: a finite number" + (" " + " and ".join(b for b in bounds if b) if any(bounds) else "")
    if len(t) > MAX_FLOAT_CHARS or not _FLOAT.fullmatch(t):
        raise ParseError(f"{expect}, got {shown(text)}.")
    value = float(t)
    if not math.isfinite(value) or value < lo or value > hi or (open_lo and value == lo):
        raise ParseError(f"{expect}, got {shown(text)}.")
    return value


def seed(text: str, what: str = "a seed") -> int:
    """A seed: 0 .. ``SEED_MAX`` (stored as int64; numpy's and torch's generators take every such value)."""
    return bounded_int(text, 0, SEED_MAX, what)


def name(text: str, pattern: re.Pattern[str], what: str, rule: str) -> str:
    """``text`` when ``pattern`` matches it whole (``rule`` says what the pattern allows, for the message)."""
    if not isinstance(text, str) or not pattern.fullmatch(text):
        raise ParseError(f"{what} {shown(text)} is not valid: {rule}.")
    return text


def layer_name(text: str) -> str:
    return name(text, LAYER_PATTERN, "layer name", "use 1-200 letters, digits, '.', '_' or '-'")

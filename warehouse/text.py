"""Text from outside (a URL, a manifest, a file or folder name, a table value) shown as text, never as markup.

Streamlit renders every message, caption, label and notice as markdown (GitHub's dialect, plus
``:emoji:`` codes, ``:red[...]`` colours, ``$...$`` LaTeX and bare-URL links), and a terminal obeys
escape sequences. So a value that reaches either goes through one of these:

- ``md(value)``: the value as plain text inside markdown: every markdown-special ASCII character
  backslash-escaped, a colon that could open ``:code:``, ``:red[...]`` or ``https://`` followed by an
  invisible word joiner,
  line breaks and other control characters shown as ``\\n``-style escapes.
- ``md_code(value)``: the value as inline code (its characters kept exactly, in a fence no backtick in
  the value can close), for names and link values a reader may copy.
- ``chart(value)``: the value as Plotly text (a label, legend entry, category, hover or title): Plotly
  reads a subset of HTML (``<b>``, ``<br>``, ``<a href>``, ``<span style>``, entities) in all of them, so
  ``&``, ``<`` and ``>`` become entities, which Plotly shows as the characters typed.
- ``term(value)``: the value on one terminal line, control characters and escape sequences shown as
  ``\\x1b``-style escapes instead of being obeyed.
"""

from __future__ import annotations

import re

#: Characters markdown (CommonMark, GFM, Streamlit's extensions, LaTeX) gives a meaning; ``\`` escapes each.
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&=@])")
#: A colon that could open ``:emoji:``, ``:red[...]``, ``:material/icon:`` or a ``scheme://`` link.
_CODE_COLON = re.compile(r":(?=//|[\w+/-]+[:\[])")
#: C0 and C1 controls, DEL, and the bidirectional overrides that reorder what a reader sees.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f]")
WORD_JOINER = "\u2060"  # invisible; breaks ``:abc:`` so no emoji, colour or icon code forms


def _visible(match: re.Match[str]) -> str:
    c = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def plain(value: object) -> str:
    """``value`` as one line: control characters written as escapes (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(_visible, str(value))


def md(value: object) -> str:
    """``value`` as literal text inside markdown (see the module's docstring)."""
    return _MD_SPECIAL.sub(r"\\\1", _CODE_COLON.sub(":" + WORD_JOINER, plain(value)))


def md_code(value: object) -> str:
    """``value`` as inline code: shown exactly (control characters as escapes), never as markup."""
    text = plain(value)
    if not text:
        return "(empty)"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def chart(value: object) -> str:
    """``value`` as Plotly text: shown as typed (control characters as escapes), never as Plotly's HTML."""
    return plain(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def term(value: object, lines: bool = False) -> str:
    """``value`` for a terminal: every control character (ESC included) written as an escape; one line,
    unless ``lines`` keeps its line breaks (a multi-line error message)."""
    if lines:
        return "\n".join(plain(line) for line in str(value).split("\n"))
    return plain(value)

"""Text as people type it into a field (a name, an address, a keyword, a title), made
safe once where it enters, so nothing inside meets a line break in a name.

A one-line field keeps no control, format or separator characters: tabs, line breaks
(including the vertical tab, form feed, U+0085, U+2028 and U+2029, which the email
package also reads as line breaks and refuses in a header) become a space, the rest are
dropped; runs of white space become one space, the ends are trimmed, and the text is in
Unicode's composed form (NFC), so that the same name typed twice is the same string.
"""

from __future__ import annotations

import unicodedata

# Format characters that change what a word looks like: the zero-width non-joiner and
# joiner (Persian and Indic spelling, emoji sequences). Every other one (bidirectional
# overrides, zero-width spaces, the byte-order mark, tag characters) is invisible and
# only hides or reorders what is shown.
_KEPT_FORMAT = frozenset("\u200c\u200d")
# Categories dropped: controls, format characters, line and paragraph separators,
# surrogates (what undecodable bytes become).
_DROPPED = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def _cleaned_characters(value: str) -> str:
    """``value`` with dropped characters removed, white-space-like ones made spaces."""
    kept = []
    for char in value:
        if unicodedata.category(char) in _DROPPED and char not in _KEPT_FORMAT:
            if char.isspace():
                kept.append(" ")
            continue
        kept.append(char)
    return "".join(kept)


def one_line(value: str, *, most: int | None = None) -> str:
    """``value`` as one clean line (see the module docstring), cut to ``most`` characters."""
    # A printable string holds none of the dropped characters (str.isprintable is False
    # for every category dropped, and for every space but U+0020): most names, and an
    # import's million rows, take this path.
    if value.isprintable():
        if not value.isascii():
            value = unicodedata.normalize("NFC", value)
        cleaned = value.strip()
        if "  " in cleaned:
            cleaned = " ".join(cleaned.split())
    else:
        cleaned = " ".join(unicodedata.normalize("NFC", _cleaned_characters(value)).split())
    if most is not None and len(cleaned) > most:
        cleaned = cleaned[:most].rstrip()
    return cleaned

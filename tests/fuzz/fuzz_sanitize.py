"""Fuzz the sanitizer, text, cutting and the email's fragment with any text.

Run: ``.venv/bin/python -m tests.fuzz.fuzz_sanitize -max_total_time=30`` (``make fuzz``).
Holds: nothing raises; sanitized HTML, summaries and email fragments keep to the
allow-list (no script, no handler, no other URL scheme); a summary has at most its limit
of text and its "…"; cut text is at most its limit; text is folded; the email's fragment
has no image and gives itself again.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from digest.core.sanitize import (
        READ_ALSO,
        cut_text,
        email_fragment,
        html_to_text,
        sanitize_html,
        summarize,
    )
    from tests.fuzz.checks import assert_safe_html, text_length


def one_input(data: bytes) -> None:
    """Check one input."""
    fdp = atheris.FuzzedDataProvider(data)
    limit = fdp.ConsumeIntInRange(1, 700)
    title = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    raw = fdp.ConsumeUnicode(fdp.remaining_bytes())
    clean = sanitize_html(raw, base_url="https://news.example/recaps/1")
    assert_safe_html(clean)
    text = html_to_text(raw)
    assert text == " ".join(text.split()), text
    assert len(cut_text(text, limit)) <= limit
    summary = summarize(raw, limit, base_url="https://news.example/recaps/1")
    assert_safe_html(summary)
    # The "…" stands one past the limit when the cut falls right after a text.
    assert text_length(summary) <= limit + 1, (limit, summary)
    shown = email_fragment(summary, title)
    assert_safe_html(shown)
    assert "<img" not in shown, shown
    if READ_ALSO.search(title) is None:  # a title holding the marker cuts itself
        again = email_fragment(shown, title)  # the title's quotes written as text now
        assert html_to_text(again) == html_to_text(shown), (summary, shown, again)
        assert email_fragment(again, title) == again, (summary, again)


def main() -> None:
    """Fuzz until libFuzzer's flags (-max_total_time, -runs) say stop."""
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

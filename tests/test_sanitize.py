"""The email's fragment of a summary (one parse: the Read-also cut, no images, vague links
titled), the sanitizer's output, and what the parser keeps of hostile markup."""

from __future__ import annotations

import pytest

from digest.core.rendering import email_summary
from digest.core.sanitize import (
    MAX_FRAGMENT_CHARS,
    email_fragment,
    html_to_text,
    parse_fragment,
    sanitize_html,
    summarize,
)

BASE = "https://news.example/recaps/1"

# (feed HTML, title, what the email showed for it: rendering.email_summary's output
# before email_fragment, kept verbatim)
EMAIL_CASES = [
    ('<p>Negotiators returned to Cairo with a new draft on hostages and aid.'
     '</p><p><a href="https://news.example/gaza">Click here</a> or read <a h'
     'ref="https://news.example/gaza/full">the full recap</a>.</p>',
     'Recap: Gaza Talks Resume in Cairo',
     '<p>Negotiators returned to Cairo with a new draft on hostages and aid.'
     '</p><p><a href="https://news.example/gaza" rel="noopener noreferrer">R'
     'ecap: Gaza Talks Resume in Cairo</a> or read <a href="https://news.exa'
     'mple/gaza/full" rel="noopener noreferrer">the full recap</a>.</p>'),
    ('<p>Standfirst one. Standfirst two.</p><img src="https://img.example/ma'
     'p.png" alt="A map of the front"><p>Read also: <a href="https://news.ex'
     'ample/r/9">Recap 9: Earlier</a></p>',
     'Recap 1: Iran Moves in Syria',
     '<p>Standfirst one. Standfirst two.</p><p></p>'),
    ('<p>Ships keep sailing from Odesa despite strikes on port cranes.</p><i'
     'mg src="https://img.example/odesa-port-800x450.png" alt="Cranes at the'
     ' port of Odesa" width="800" height="450">',
     "Recap: Ukraine's Grain Corridor",
     '<p>Ships keep sailing from Odesa despite strikes on port cranes.</p>'),
    ('<p>Talks. <a href="https://n.example/1"> Read More </a></p>\n<p><a href'
     '="https://n.example/2">HERE</a> and <a href="https://n.example/3">ther'
     'e</a>, <a href="https://n.example/4">this</a>, <a href="https://n.exam'
     'ple/5">link</a>, <a href="https://n.example/6">more</a>.</p>',
     'A "quoted" & <odd> title',
     '<p>Talks. <a href="https://n.example/1" rel="noopener noreferrer">A &q'
     'uot;quoted&quot; &amp; &lt;odd&gt; title</a></p>\n<p><a href="https://n'
     '.example/2" rel="noopener noreferrer">A &quot;quoted&quot; &amp; &lt;o'
     'dd&gt; title</a> and <a href="https://n.example/3" rel="noopener noref'
     'errer">there</a>, <a href="https://n.example/4" rel="noopener noreferr'
     'er">A &quot;quoted&quot; &amp; &lt;odd&gt; title</a>, <a href="https:/'
     '/n.example/5" rel="noopener noreferrer">A &quot;quoted&quot; &amp; &lt'
     ';odd&gt; title</a>, <a href="https://n.example/6" rel="noopener norefe'
     'rrer">A &quot;quoted&quot; &amp; &lt;odd&gt; title</a>.</p>'),
    ('<p>Body text.</p><p><strong>Read also:</strong></p><ul><li><a href="ht'
     'tps://n.example/1">First</a></li><li><a href="https://n.example/2">Sec'
     'ond</a></li></ul>',
     "Recap: Israel's Coalition Survives",
     '<p>Body text.</p><p><strong></strong></p>'),
    ('<p>ارتفعت أسعار الخبز.</p><p>اقرأ أيضاً: <a href="https://n.example/ar'
     '/1">قصة</a></p>',
     'ملخص: سوريا',
     '<p>ارتفعت أسعار الخبز.</p><p></p>'),
    ('<p>Iran&#8217;s envoy &amp; the &ldquo;deal&rdquo;&nbsp;&mdash; again&'
     'hellip; <abbr title="European Union">EU</abbr>, <q cite="https://q.exa'
     'mple">quoted</q>.</p>\n<blockquote cite="https://x.example/q"><p>A quot'
     'e &lt;with&gt; brackets</p></blockquote>',
     'Recap: The Envoy',
     '<p>Iran’s envoy &amp; the “deal”&nbsp;— again… <abbr title="European U'
     'nion">EU</abbr>, <q cite="https://q.example">quoted</q>.</p>\n<blockquo'
     'te cite="https://x.example/q"><p>A quote &lt;with&gt; brackets</p></bl'
     'ockquote>'),
    ('<p>Click <a href="https://n.example/h" title="A &quot;title&quot;">her'
     'e</a> to read.</p><p>See also <a href="https://n.example/9">Nine</a></'
     'p><img src="https://img.example/z.png">',
     'Recap: Nine',
     '<p>Click <a href="https://n.example/h" title="A &quot;title&quot;" rel'
     '="noopener noreferrer">Recap: Nine</a> to read.</p><p></p>'),
    ('<p>Line one<br>Line two</p><ol><li>One</li><li><em>Two</em> <code>x &l'
     't; y</code></li></ol><p>An <a href="https://n.example/ملخص سوريا">Arab'
     'ic slug</a>.</p>',
     'Recap: Lists',
     '<p>Line one<br>Line two</p><ol><li>One</li><li><em>Two</em> <code>x &l'
     't; y</code></li></ol><p>An <a href="https://n.example/ملخص سوريا" rel='
     '"noopener noreferrer">Arabic slug</a>.</p>'),
    ('<p>No links, no images, nothing to change.</p>',
     'Recap: Plain',
     '<p>No links, no images, nothing to change.</p>'),
    ('<p><abbr title="a &lt; b &gt; c &amp; d\xa0e">ABC</abbr> <a href="https:/'
     '/n.example/q" title="x < y > z">Here</a> &lt;tag&gt;\xa0&amp;</p>',
     'Recap: Signs <&>',
     '<p><abbr title="a &lt; b &gt; c &amp; d&nbsp;e">ABC</abbr> <a href="ht'
     'tps://n.example/q" title="x &lt; y &gt; z" rel="noopener noreferrer">R'
     'ecap: Signs &lt;&amp;&gt;</a> &lt;tag&gt;&nbsp;&amp;</p>'),
]


@pytest.mark.parametrize(("raw", "title", "shown"), EMAIL_CASES)
def test_the_email_fragment_is_what_the_email_showed(raw: str, title: str,
                                                     shown: str) -> None:
    fragment = sanitize_html(raw, base_url=BASE)
    assert email_fragment(fragment, title) == shown
    assert email_summary(fragment, title) == shown  # the renderer's filter, the same


def test_vague_links_get_the_title_whatever_their_case_spacing_or_markup() -> None:
    fragment = sanitize_html('<p><a href="https://n.example/1">\n CLICK   here </a> · '
                             '<a href="https://n.example/2"><b>Read</b> more</a> · '
                             '<a href="https://n.example/3">here and there</a></p>')
    shown = email_fragment(fragment, "Iran & <Syria>")
    assert shown.count(">Iran &amp; &lt;Syria&gt;</a>") == 2
    assert ">here and there</a>" in shown and "CLICK" not in shown and "<b>" not in shown


def test_the_read_also_block_goes_where_it_starts_in_the_text() -> None:
    fragment = sanitize_html('<p title="read also">Body <b>bold</b>.</p><p>More. See also: '
                             '<a href="https://n.example/9">Nine</a></p><p>After.</p>')
    # The marker in an attribute is no marker; the one in the text cuts there.
    assert email_fragment(fragment, "T") == '<p>Body <b>bold</b>.</p><p>More. </p>'


def test_images_go_and_their_tails_stay() -> None:
    fragment = sanitize_html('<p>One <img src="https://i.example/a.png" alt="a"> two'
                             '<img src="https://i.example/b.png"> three</p>')
    assert email_fragment(fragment, "T") == "<p>One  two three</p>"


def test_the_fragment_is_reduced_to_the_allow_list_whatever_it_is_given() -> None:
    shown = email_fragment('<p onclick="x()">a<script>alert(1)</script><iframe src="x">'
                           '</iframe><a href="https://n.example/" onmouseover="y()">b</a>'
                           '<svg onload="z()"><p>c</p></svg></p>', "T")
    assert shown == '<p>a<a href="https://n.example/">b</a></p>'


def test_the_sanitizer_written_again_is_unchanged() -> None:
    # What the email writes back is escaped as nh3 escapes it, byte for byte.
    for raw, title, _ in EMAIL_CASES:
        fragment = sanitize_html(raw, base_url=BASE)
        kept = fragment.replace("Read also:", "").replace("See also", "")
        if "<img" not in kept and "اقرأ" not in kept:
            vague = {"click here", "here", "read more", "more", "link", "this"}
            if not any(f">{w}<" in kept.lower() for w in vague):
                assert email_fragment(kept, title) == kept


def test_text_keeps_spaces_where_lines_break_and_paragraphs_end() -> None:
    assert html_to_text("<p>One</p><p>two<br>three</p>four &amp; <b>five</b>") == \
        "One two three four & five"
    assert html_to_text("<P>Upper</P><P>case</P>") == "Upper case"
    assert html_to_text("a<script>var x = '<p>';</script>b<style>p{}</style>c") == "abc"
    assert html_to_text("Vector&lt;int&gt; &copy; &#8217; &#x1F600;") == "Vector<int> © ’ 😀"


def test_a_summary_never_holds_more_than_its_share_of_markup() -> None:
    # 30,000 empty links: a few characters of text, a megabyte of markup once sanitized.
    summary = summarize('<a href="https://n.example/">' * 30_000 + "<p>text</p>", 600)
    assert summary.count("<a ") <= 600 + 100
    assert len(summary) < 50_000


def test_what_the_parser_reads_is_bounded() -> None:
    body = parse_fragment("<p>" + "x" * (2 * MAX_FRAGMENT_CHARS) + "</p>")
    assert len("".join(body.itertext())) <= MAX_FRAGMENT_CHARS
    # Nesting stops at the parser's depth (256) and what follows is not kept.
    deep = parse_fragment("<div>" * 10_000 + "deep" + "</div>" * 10_000 + "<p>after</p>")
    depth = max(sum(1 for _ in el.iterancestors()) for el in deep.iter())
    assert depth <= 256


def test_lone_surrogates_are_replaced_not_raised() -> None:
    assert html_to_text("<b>a\ud800b</b>") == "a\ufffdb"
    assert sanitize_html("<p>a\udfffb</p>") == "<p>a\ufffdb</p>"

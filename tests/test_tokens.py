"""Signed tokens: made fast, read by itsdangerous, rotated keys, tampering refused."""

from __future__ import annotations

import pytest
from itsdangerous import URLSafeSerializer

from digest.core.tokens import InvalidToken, Tokens


@pytest.mark.parametrize("purpose", ["unsubscribe", "preferences"])
def test_fast_tokens_are_exactly_itsdangerous_tokens(purpose: str) -> None:
    tokens = Tokens(["current", "older"])
    reference = URLSafeSerializer(["older", "current"], salt=f"digest.{purpose}")
    for value in (0, 7, 123_456, 10**9):
        made = tokens.make(purpose, value)
        assert made == reference.dumps(value)
        assert tokens.read(purpose, made) == value
    # Past ~10^11 itsdangerous would compress the payload; ours stays plain and reads back.
    assert tokens.read(purpose, tokens.make(purpose, 10**15)) == 10**15


# Made by the signing code that sent the emails already out (before 2026-12-04), under the
# keys ["the-current-key", "a-key-from-last-year"]: the links in those emails.
SENT = [
    ("unsubscribe", 1, "MQ.NtbY11DBUqrOv5Ju5GgVgROsKM8"),
    ("unsubscribe", 4242, "NDI0Mg.qPgFEVORGc8ud9DFtdQA0O-ZECo"),
    ("unsubscribe", 987654321, "OTg3NjU0MzIx.R7G71Vg4PX1zP5ZWoph72EfqbyE"),
    ("preferences", 1, "MQ.5xzMeAaLg1oI81PjEWXbtCf3E5s"),
    ("preferences", 4242, "NDI0Mg.t8g6sOUVh_qP3nGj57xLCTL0eZw"),
    ("preferences", 987654321, "OTg3NjU0MzIx.hvPafAjzSey1HP8ZnK1FvuJKDeg"),
]


@pytest.mark.parametrize(("purpose", "value", "token"), SENT)
def test_links_in_emails_already_sent_still_work(purpose: str, value: int, token: str) -> None:
    tokens = Tokens(["the-current-key", "a-key-from-last-year"])
    assert tokens.read(purpose, token) == value
    assert tokens.make(purpose, value) == token  # and a resent issue gets the same link
    # After the current key was rotated out of first place, too.
    assert Tokens(["a-newer-key", "the-current-key"]).read(purpose, token) == value


def test_a_confirmation_link_already_sent_still_works() -> None:
    tokens = Tokens(["the-current-key", "a-key-from-last-year"])
    assert tokens.read("confirm", "Nw.axI0Ng.Fl6bgRvq3tQiwtJiEFx1Oxa1264") == 7
    # One signed by the older key, before the rotation.
    assert tokens.read("unsubscribe", "NDI0Mg.s6yJRI-kZAC9s8UlWjjlNqa_gSU") == 4242


def test_rotation_tampering_and_purpose() -> None:
    old = Tokens(["old-key"])
    token = old.make("unsubscribe", 42)
    rotated = Tokens(["new-key", "old-key"])
    assert rotated.read("unsubscribe", token) == 42  # links in sent emails still work
    assert rotated.make("unsubscribe", 42) != token  # new ones use the new key
    with pytest.raises(InvalidToken):
        Tokens(["new-key"]).read("unsubscribe", token)  # the old key was dropped
    with pytest.raises(InvalidToken):
        rotated.read("preferences", token)  # an unsubscribe link is not a preferences link
    with pytest.raises(InvalidToken):
        rotated.read("unsubscribe", token[:-2] + ("A" if token[-1] != "A" else "B") + "x")
    assert "42" not in token and "@" not in token

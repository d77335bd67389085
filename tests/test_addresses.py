"""Addresses: the fast path agrees with email-validator's full validation."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email

from digest.errors import InvalidInputError
from subscribers.addresses import address_key, normalize_address

CASES = ["Alice.Reader@Example.ORG", "a..b@example.org", ".a@example.org", "a@example",
         "a@-example.org", "a@exa_mple.org", "x@localhost", "a@b.c",
         "a+tag@sub.example.co.uk", "ünï@example.org", "a@ex..ample.org",
         "a@" + "x" * 64 + ".org", "a@123.45.67.89", "user@[1.2.3.4]",
         "a@example.invalid", "\"quoted local\"@example.org", "a@bücher.example",
         "o'brien@example.ie", "a@example.org.", " spaced@example.org ", "a.@example.org",
         "-a.b.c_d@example.org", "x" * 65 + "@example.org", "a@b@example.org",
         "a\\b@example.org", "a@EXAMPLE.ORG", "a b@example.org"]


def full(address: str) -> str:
    try:
        result = validate_email(address.strip(), check_deliverability=False,
                                allow_smtputf8=True)
    except EmailNotValidError:
        return "invalid"
    return f"{result.local_part}@{result.domain.lower()}"


@pytest.mark.parametrize("address", CASES)
def test_fast_path_matches_email_validator(address: str) -> None:
    try:
        ours = normalize_address(address)
    except InvalidInputError:
        ours = "invalid"
    assert ours == full(address)


def test_display_keeps_the_local_part_and_compares_whole_address() -> None:
    assert normalize_address("Alice.Reader@Example.ORG") == "Alice.Reader@example.org"
    assert address_key("Alice.Reader@example.org") == address_key("alice.reader@EXAMPLE.org")

"""Email addresses: offline validation, the form shown, and the form compared."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from digest.errors import InvalidInputError
from subscribers.fields import one_line

# email-validator (with idna and dnspython's pieces, a slow import) is imported by the first
# validation, not by every command that only compares or hashes addresses.
if TYPE_CHECKING:
    from email_validator import ValidatedEmail


# Plain ASCII addresses, the great majority, take a fast path: one match of the whole
# address, its local part by email-validator's own dot-atom rule, and the domain by a full
# validation cached per domain (validating a domain is most of the cost, and lists share
# few domains). Anything else, and every reason for refusing, comes from a full validation.
@lru_cache(maxsize=1)
def _validator() -> tuple[Callable[..., ValidatedEmail], type[Exception],
                          Callable[[str], re.Match[str] | None]]:
    """email-validator's validation, its error, and the plain-address match (made once:
    importing names from it on every call would be a sizeable part of each row's cost)."""
    from email_validator import EmailNotValidError, validate_email
    from email_validator.rfc_constants import ATEXT

    plain = re.compile(f"([{ATEXT}]+(?:\\.[{ATEXT}]+)*)@([A-Za-z0-9.-]+)").fullmatch
    return validate_email, EmailNotValidError, plain


@lru_cache(maxsize=65536)
def _domain(domain: str) -> str:
    """The normalized domain, or raise EmailNotValidError; cached."""
    validate_email = _validator()[0]
    return str(validate_email(f"postmaster@{domain}", check_deliverability=False).domain)


def normalize_address(raw: str) -> str:
    """Validate an address offline and return its display form (domain lower-cased).

    Raise :class:`InvalidInputError` with email-validator's reason when it is not valid.
    """
    validate_email, not_valid, plain = _validator()
    candidate = raw.strip()
    if not candidate:
        raise InvalidInputError("empty address")
    try:
        if len(candidate) <= 254 and (parts := plain(candidate)) is not None:
            return f"{parts[1]}@{_domain(parts[2].lower())}"
        # Invisible characters pasted with an address (a zero-width space, a line break)
        # are no part of it; what is left is validated as ever.
        candidate = one_line(candidate)
        if not candidate:
            raise InvalidInputError("empty address")
        result = validate_email(candidate, check_deliverability=False, allow_smtputf8=True)
    except not_valid as e:
        raise InvalidInputError(f"{candidate!r} is not a valid address: {e}") from e
    return f"{result.local_part}@{result.domain.lower()}"


def address_key(address: str) -> str:
    """The form addresses are compared in: the whole address, case-folded."""
    return address.strip().casefold()


def address_hash(address: str) -> str:
    """A one-way hash of an address, for suppression entries that outlive the person."""
    return hashlib.sha256(address_key(address).encode("utf-8")).hexdigest()

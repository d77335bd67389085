"""Email addresses: offline validation, the form shown, and the form compared."""

from __future__ import annotations

import hashlib

from email_validator import EmailNotValidError, validate_email

from digest.errors import InvalidInputError


def normalize_address(raw: str) -> str:
    """Validate an address offline and return its display form (domain lower-cased).

    Raise :class:`InvalidInputError` with email-validator's reason when it is not valid.
    """
    candidate = raw.strip()
    if not candidate:
        raise InvalidInputError("empty address")
    try:
        result = validate_email(candidate, check_deliverability=False,
                                allow_smtputf8=True)
    except EmailNotValidError as e:
        raise InvalidInputError(f"{candidate!r} is not a valid address: {e}") from e
    return f"{result.local_part}@{result.domain.lower()}"


def address_key(address: str) -> str:
    """The form addresses are compared in: the whole address, case-folded."""
    return address.strip().casefold()


def address_hash(address: str) -> str:
    """A one-way hash of an address, for suppression entries that outlive the person."""
    return hashlib.sha256(address_key(address).encode("utf-8")).hexdigest()

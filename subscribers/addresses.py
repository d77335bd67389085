"""Email addresses: offline validation, the form shown, and the form compared."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from typing import TYPE_CHECKING

from digest.errors import InvalidInputError

# email-validator (with idna and dnspython's pieces, 20-30 ms) is imported by the first
# validation, not by every command that only compares or hashes addresses.
if TYPE_CHECKING:
    from email_validator import ValidatedEmail

# Plain ASCII addresses, the great majority, take a fast path: the local part is checked
# by email-validator's own local-part check, the domain by a full validation cached per
# domain (validating a domain is most of the cost, and lists share few domains).
_SIMPLE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+$")


@lru_cache(maxsize=65536)
def _domain(domain: str) -> str:
    """The normalized domain, or raise EmailNotValidError; cached."""
    from email_validator import validate_email
    return str(validate_email(f"postmaster@{domain}", check_deliverability=False).domain)


def normalize_address(raw: str) -> str:
    """Validate an address offline and return its display form (domain lower-cased).

    Raise :class:`InvalidInputError` with email-validator's reason when it is not valid.
    """
    from email_validator import EmailNotValidError, validate_email
    from email_validator.syntax import validate_email_local_part

    candidate = raw.strip()
    if not candidate:
        raise InvalidInputError("empty address")
    result: ValidatedEmail
    try:
        if _SIMPLE.match(candidate) and len(candidate) <= 254:
            local, _, domain = candidate.rpartition("@")
            checked = validate_email_local_part(local, allow_smtputf8=False)
            return f"{checked['local_part']}@{_domain(domain.lower())}"
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

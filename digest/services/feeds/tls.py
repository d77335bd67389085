"""The TLS context every fetch of this process verifies servers with, made once.

Loading the certificate authorities is slow, and all of it happens in OpenSSL without
Python's lock. :func:`prepare` starts that on a thread of its own as a command begins, so
it happens while the command imports its modules and opens its database; :func:`context`
waits for it (or makes it, when nobody prepared it). Light to import: only the standard
library, and nothing at all until the context is made.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from digest.errors import DigestError

if TYPE_CHECKING:
    import ssl

_lock = threading.Lock()
_made: ssl.SSLContext | None = None
_failed: DigestError | None = None
_maker: threading.Thread | None = None


def _make() -> None:
    global _made, _failed
    import ssl  # here, on this thread too: its import is also kept off the command's start
    # As httpx makes it when given verify=True: the files SSL_CERT_FILE or SSL_CERT_DIR
    # name, else certifi's bundle.
    where = ("SSL_CERT_FILE", "SSL_CERT_DIR")
    named = next((name for name in where if os.environ.get(name)), None)
    try:
        if named == "SSL_CERT_FILE":
            made = ssl.create_default_context(cafile=os.environ[named])
        elif named == "SSL_CERT_DIR":
            made = ssl.create_default_context(capath=os.environ[named])
        else:
            import certifi
            made = ssl.create_default_context(cafile=certifi.where())
    except (OSError, ssl.SSLError) as e:  # raised again to whoever asks for the context
        source = f"{named}={os.environ[named]}" if named else "certifi's bundle"
        _failed = DigestError(
            f"cannot load the certificate authorities that verify feed servers from "
            f"{source}: {e.strerror or e}",
            hint=f"point {named} at a PEM bundle or folder, or unset it" if named
            else "reinstall certifi")
    else:
        _made = made


def prepare() -> None:
    """Start making the context in the background (once per process)."""
    global _maker
    with _lock:
        if _maker is None and _made is None:
            _maker = threading.Thread(target=_make, name="tls-context", daemon=True)
            _maker.start()


def context() -> ssl.SSLContext:
    """The process's TLS context; :class:`DigestError` when the certificate authorities
    cannot be loaded (SSL_CERT_FILE names a missing file, say)."""
    prepare()
    if _maker is not None:
        _maker.join()
    if _failed is not None:
        raise _failed
    assert _made is not None
    return _made

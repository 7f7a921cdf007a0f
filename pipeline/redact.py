"""Credentials out of everything printed: one helper for every place a URL reaches a log, an error or a page."""

from __future__ import annotations

import re

# scheme://user:password@host... -> the password part; also libpq's "password=..." keyword form.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^\s]*)(?P<at>@)")
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\S+)", re.I)
MASK = "***"


def redact_url(url: str | None) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; other text is unchanged."""
    if not url:
        return str(url)
    return redact_text(url)


def redact_text(text: str) -> str:
    """Every URL password and ``password=...`` keyword in free text (error messages, argv) masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    return _KEYWORD_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)

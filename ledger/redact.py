"""A store URL as it may be shown: in messages, JSON output and exported evidence.

A PostgreSQL URL may carry a password, before the host (``user:pw@host``) or as a
parameter (``?password=pw``); what the ledger prints or writes shows ``***`` instead.
The URL itself, password and all, is still what opens the store and its workers.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_PASSWORD_PARAMETER = re.compile(r"([?&]password=)[^&#]*")
_USER_INFO = re.compile(r"^([a-z]+://[^:/@]*:)[^@]*@")


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***``, wherever it is given."""
    url = _PASSWORD_PARAMETER.sub(r"\1***", url)
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL urllib can split: hide whatever could be one
        return _USER_INFO.sub(r"\1***@", url)
    return url.replace(":" + password + "@", ":***@", 1) if password else url

"""Whether a file can be made where the user asked, found out before any work is done.

The reject file, a SQLite store and an audit export each name a file to create. Each
checks it here first, so that a folder that does not exist, a folder in the file's
place or a folder it may not write in is one clear usage error, said the same way
everywhere, rather than a failure halfway through the work. And once SQLite has
refused a store file, whether it was ever a database at all.
"""

from __future__ import annotations

import os
from typing import Literal

Use = Literal["open", "append", "replace"]


def file_problem(path: str, use: Use = "append") -> str | None:
    """What stops ``path`` from serving as a file for ``use``, in words for an error
    message, or None when nothing does.

    ``open``: the file may exist (a store; reading it needs no write permission) or
    be created. ``append``: it is written in place, or created. ``replace``: a new file
    is made beside it and renamed over it, so only its folder must be writable.
    """
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return f"{path} is a folder, not a file"
    if not os.path.isdir(folder):
        return f"no such folder {folder} (create it first)"
    if use == "open":  # an existing file may be read-only: it is then opened read-only
        if os.path.exists(path) or os.access(folder, os.W_OK):
            return None
        return f"no such file, and its folder {folder} is not writable to create it in"
    written = path if use == "append" and os.path.exists(path) else folder
    if not os.access(written, os.W_OK):
        return "permission denied"
    return None


def is_utf8(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: no lone surrogates, which is how Python
    holds the bytes of a command-line argument or file name that are not UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path: str) -> str:
    """``path`` as text to print or put in JSON. A file name may be any bytes; those
    that are not UTF-8 are shown escaped (``caf\\xe9.jsonl`` for the Latin-1 name
    ``café.jsonl``), so the name can be written out and still tells the file."""
    if is_utf8(path):
        return path
    try:
        raw = path.encode("utf-8", "surrogateescape")  # the name's bytes, as given
    except UnicodeEncodeError:  # a surrogate no bytes decode to (made in Python)
        return path.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def not_sqlite(path: str) -> str | None:
    """Why the file at ``path`` is no SQLite database at all (in words), or None.

    This tells a file that never was a database (an input file given as ``--store`` by
    mistake: the user's error) from a damaged store. Call it only once SQLite has
    refused the file ("file is not a database"): closing a file opened here releases
    every POSIX lock this process holds on it, SQLite's for its other connections too.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError:
        return None
    return None if head == SQLITE_HEADER else (
        f"{path} is not a SQLite database (it does not begin with SQLite's header)")

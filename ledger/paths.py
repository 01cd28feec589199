"""Whether a file can be made where the user asked, found out before any work is done.

The reject file, a SQLite store and an audit export each name a file to create. Each
checks it here first, so that a folder that does not exist, a folder in the file's
place or a folder it may not write in is one clear usage error, said the same way
everywhere, rather than a failure halfway through the work.
"""

from __future__ import annotations

import os


def file_problem(path: str, *, writable: bool = True) -> str | None:
    """What stops a file from being made (or, with ``writable``, written) at ``path``,
    in words for an error message, or None when nothing does."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return f"{path} is a folder, not a file"
    if not os.path.isdir(folder):
        return f"no such folder {folder} (create it first)"
    if writable and not os.access(path if os.path.exists(path) else folder, os.W_OK):
        return "permission denied"
    return None

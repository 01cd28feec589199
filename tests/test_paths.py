"""file_problem: what stops a file the user named from serving, said one way everywhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger.paths import file_problem


def test_a_missing_folder_and_a_folder_in_the_files_place_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "x.db"
    for use in ("open", "append", "replace"):
        assert file_problem(str(missing), use) == (
            f"no such folder {tmp_path / 'none'} (create it first)")
        assert file_problem(str(tmp_path), use) == f"{tmp_path} is a folder, not a file"
        assert file_problem(str(tmp_path / "new.db"), use) is None
    assert file_problem("relative-name.jsonl") is None  # the current folder


@pytest.mark.parametrize(("use", "denied_for", "problem"), [
    ("append", "file", "permission denied"),   # written in place: the file must be writable
    ("append", "folder", None),
    ("replace", "file", None),                 # renamed over: only the folder matters
    ("replace", "folder", "permission denied"),
    ("open", "file", None),                    # a store may be only read
    ("open", "folder", None),
])
def test_which_permission_counts_depends_on_the_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use: str, denied_for: str,
    problem: str | None,
) -> None:
    """Root may write anywhere, so the system's answer is stood in for: only the file,
    or only its folder, is not writable."""
    existing = tmp_path / "out.jsonl"
    existing.write_text("")
    denied = str(existing if denied_for == "file" else tmp_path)
    monkeypatch.setattr(os, "access", lambda p, mode: os.fspath(p) != denied)
    assert file_problem(str(existing), use) == problem  # type: ignore[arg-type]

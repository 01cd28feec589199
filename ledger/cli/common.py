"""What every command shares: options, opening the store, errors, output.

Each command parses options, opens the store with :func:`open_store`, makes one
library call and renders. Library errors (``LedgerError``) become one
``Error: ...`` line on stderr and the error's documented exit code.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

if TYPE_CHECKING:
    from ledger.store import Store

P = ParamSpec("P")
R = TypeVar("R")

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_PROBLEMS = 4
EXIT_NOT_FOUND = 5
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_CLOSED_PIPE = 141  # as a command killed by SIGPIPE: the reader went away (`| head`)
EXIT_TERMINATED = 143  # SIGTERM (a service manager, `timeout`, `docker stop`)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the command stops as it does on Ctrl-C
    (open transactions roll back, worker processes end with it), exit 143."""


def stop_on_sigterm() -> None:
    """Let SIGTERM stop the command through :func:`handle_errors` instead of killing
    the process without a word (Python's default). Only the main thread may set a
    handler: the command run from another thread (embedded) keeps the process's."""
    import signal
    import threading

    def terminated(_signum: int, _frame: Any) -> None:
        raise Terminated

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


def json_option(f: Callable[P, R]) -> Callable[P, R]:
    """``--json``: machine-readable output with the documented field names."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def usable_cpus() -> int:
    """The CPUs this process may run on (a container's cpuset or ``taskset`` counts, as
    Python 3.13's ``os.process_cpu_count`` does), else every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on every platform
        return os.cpu_count() or 1


def workers_option(shared: str, note: str = "") -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``--workers N``: processes sharing the work; the command gets N (default: one per
    CPU it may use)."""
    return click.option(
        "--workers", type=click.IntRange(min=1), metavar="N",
        callback=lambda _ctx, _param, value: value or usable_cpus(),
        help=f"Processes sharing the {shared} (default: one per CPU; 1: this one only).{note}",
    )


class Text(click.types.StringParamType):
    """A name or value compared with what the ledger stores: ``ledger/cli/main.py``
    gives every plain text parameter this type (file names are ``click.Path``). Text
    the ledger could not store matches nothing in it, so it is a usage error naming
    the parameter (exit 2): bytes that are not UTF-8, which a shell passes on as they
    are (Python holds them as lone surrogates), or the NUL character."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        from ledger.paths import is_utf8

        text = super().convert(value, param, ctx)
        if not is_utf8(text):
            self.fail(f"'{printable(text)}' is not valid UTF-8", param, ctx)
        if "\x00" in text:
            self.fail(f"'{printable(text)}' holds the NUL character", param, ctx)
        return text


TEXT = Text()
LIMIT = click.IntRange(1, 2**63 - 1)  # a row count the stores take (64-bit)


def tenant_option(required: bool = True) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``--tenant T``: the isolation boundary no command crosses."""
    return click.option(
        "--tenant", required=required,
        help="The tenant (no command reads or writes across tenants).",
    )


def handle_errors(f: Callable[P, R]) -> Callable[P, R]:
    """Turn LedgerError into ``Error: ...`` and its exit code; never a traceback.

    An output whose reader went away (``| head``) ends the command quietly, as
    SIGPIPE ends other tools (exit 141); any other refused read or write (a full
    disk) is one ``Error:`` line naming the system's reason, exit 1.
    """

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from ledger.errors import LedgerError

        try:
            result = f(*args, **kwargs)
            sys.stdout.flush()  # a write refused now is reported here, not at exit
            return result
        except LedgerError as exc:
            click.echo(f"Error: {printable(str(exc), newlines=True)}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            stopped = isinstance(exc, Terminated)
            click.echo(f"{'Terminated' if stopped else 'Interrupted'}: committed batches are "
                       "kept; re-run to resume.", err=True)
            sys.exit(EXIT_TERMINATED if stopped else EXIT_INTERRUPTED)
        except BrokenPipeError:
            _discard_stdout()
            sys.exit(EXIT_CLOSED_PIPE)
        except OSError as exc:
            if os.environ.get("AGENTLEDGER_DEBUG"):
                raise
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"Error: {printable(f'{exc.strerror or exc}{where}')}", err=True)
            _discard_stdout()
            sys.exit(EXIT_INTERNAL)
        except (click.ClickException, click.exceptions.Exit, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("AGENTLEDGER_DEBUG"):
                raise
            click.echo(f"Internal error: {type(exc).__name__}: {exc} "
                       "(set AGENTLEDGER_DEBUG=1 for a traceback)", err=True)
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so what is still buffered for it cannot fail at exit."""
    try:
        target = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (captured, as in tests): nothing to redirect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, target)
    os.close(devnull)


@contextmanager
def open_store(ctx: click.Context, *, writes: str | None = None) -> Iterator[Store]:
    """Open (and migrate) the store named by ``--store`` / ``$AGENTLEDGER_STORE``.

    A command that ``writes`` (what, e.g. "ingest into it") stops at once with a usage
    error on a store this process may only read."""
    from ledger.store import Store

    store = Store.open(ctx.obj.get("store"))
    try:
        if writes is not None:
            store.backend.writable(writes)
        yield store
    finally:
        store.close()


def warn_unknown_tenant(store: Store, tenant: str) -> None:
    """A stderr warning when ``tenant`` has no trace in the store: a mistyped tenant's
    empty answer ("No findings.", ``[]``) must not read as a clean one."""
    from contextlib import closing

    from ledger.backends.base import StreamQuery

    with closing(store.backend.iter_streams(StreamQuery(tenant=tenant, limit=1))) as found:
        if next(found, None) is not None:
            return
    click.echo(printable(f"warning: tenant {tenant!r} has no traces in this store"), err=True)


def emit_json(value: Any) -> None:
    """Print a JSON document (UTF-8, indented) to stdout."""
    sys.stdout.buffer.write(_indented(value) + b"\n")
    sys.stdout.flush()


def emit_json_lists(head: dict[str, Any], lists: Mapping[str, Iterable[Any]]) -> None:
    """Print ``{**head, key: [*items], ...}`` for each key of ``lists`` (where ``head``
    has it, else after) as :func:`emit_json` does, taking the items one at a time (see
    :func:`all_or_nothing`)."""
    document = {**head, **{key: [] for key in lists}}  # a key of ``head`` keeps its place
    with all_or_nothing() as out:
        whole = _indented(document)
        done = 0
        for key in [k for k in document if k in lists]:  # no string holds a line break:
            items = lists[key]  # these are the keys
            mark = b"\n  " + _indented(key) + b": []"
            at = whole.index(mark, done) + len(mark) - 1  # the list's "]"
            out.write(whole[done:at])
            count = 0
            for count, item in enumerate(items, 1):
                out.write((b"\n" if count == 1 else b",\n") + b"    "
                          + _indented(item).replace(b"\n", b"\n    "))
            out.write(b"\n  " if count else b"")
            done = at
        out.write(whole[done:] + b"\n")


def emit_json_array(items: Iterable[Any]) -> None:
    """Print ``[*items]`` as :func:`emit_json` does, taking the items one at a time
    (see :func:`all_or_nothing`)."""
    with all_or_nothing() as out:
        count = 0
        for count, item in enumerate(items, 1):
            out.write((b"[\n  " if count == 1 else b",\n  ")
                      + _indented(item).replace(b"\n", b"\n  "))
        out.write(b"\n]\n" if count else b"[]\n")


def emit_lines(lines: Iterable[str]) -> None:
    """Print lines of text, taking them one at a time (see :func:`all_or_nothing`)."""
    with all_or_nothing() as out:
        for line in lines:
            out.write(line.encode("utf-8", "replace") + b"\n")


@contextmanager
def all_or_nothing() -> Iterator[Any]:
    """A file to write output into: put together in a temporary file (on disk past 8 MiB)
    and printed once complete, so an error part-way prints nothing and memory does not
    grow with the output."""
    import shutil
    import tempfile

    with tempfile.SpooledTemporaryFile(max_size=8 * 2**20) as out:
        yield out
        out.seek(0)
        sys.stdout.flush()
        shutil.copyfileobj(out, sys.stdout.buffer)
    sys.stdout.flush()


def _indented(value: Any) -> bytes:
    """``value`` as indented JSON. Integers beyond 64 bits and events nested to the
    contract's limit inside the document's own levels are beyond orjson: the stdlib
    writes those, exactly. Neither writes a line break inside a string."""
    import orjson

    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2)
    except TypeError:
        import json

        try:
            return json.dumps(value, indent=2, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a file name that is not UTF-8 (stored text always is)
            return _indented(_shown_names(value))


def _shown_names(value: Any) -> Any:
    """``value`` with every string :func:`ledger.paths.shown`: file names (an output
    path, an input's name) are the only strings of a document that may not be UTF-8."""
    from ledger.paths import shown

    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {shown(k): _shown_names(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown_names(v) for v in value]
    return value


def is_terminal() -> bool:
    """Whether stderr is a terminal (progress bars and colour only then)."""
    return sys.stderr.isatty()


_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # marks, embeddings, overrides, isolates
_NOT_UTF8 = "\ud800-\udfff"  # lone surrogates: bytes of a file name that are not UTF-8
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}{_NOT_UTF8}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_BIDI}{_NOT_UTF8}]")


def printable(text: str, *, newlines: bool = False) -> str:
    """Recorded text made safe for a terminal: control characters (escape sequences,
    carriage returns, bells) and bidirectional overrides are shown as escapes
    (``\\x1b``, ``\\r``, ``\\u202e``), never acted on. Agents and the pages their
    tools read choose this text; an auditor's screen must show it, not obey it.
    ``newlines`` keeps line breaks (a multi-line message). A file name's bytes that
    are not UTF-8 are shown as :func:`ledger.paths.shown` shows them (``\\xe9``)."""
    unsafe = _UNSAFE_BUT_NEWLINE if newlines else _UNSAFE
    if unsafe.search(text) is None:
        return text
    return unsafe.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    from ledger.paths import shown

    char = match.group()
    return shown(char) if "\ud800" <= char <= "\udfff" else (
        char.encode("unicode_escape").decode("ascii"))


def emit_table(rows: Iterable[Sequence[str]], headers: Sequence[str], *, empty: str) -> None:
    """Print :func:`table` of ``rows`` (or the line ``empty`` if there is none), taking
    the rows one at a time: their cells wait in a temporary file (on disk past 8 MiB)
    until the columns' widths are known, so memory does not grow with the rows."""
    import tempfile

    widths = [len(h) for h in headers]
    with tempfile.SpooledTemporaryFile(max_size=8 * 2**20) as cells:
        count = 0
        for count, row in enumerate(rows, 1):  # noqa: B007
            shown = [printable(c) for c in row]  # no control character: no \x1f, no \n
            widths = [max(w, len(c)) for w, c in zip(widths, shown, strict=True)]
            cells.write("\x1f".join(shown).encode() + b"\n")
        if not count:
            emit_lines([empty])
            return
        cells.seek(0)
        with all_or_nothing() as out:
            out.write(_table_line(headers, widths) + b"\n"
                      + "  ".join("-" * w for w in widths).encode() + b"\n")
            for line in cells:
                out.write(_table_line(line[:-1].decode().split("\x1f"), widths) + b"\n")


def _table_line(cells: Sequence[str], widths: Sequence[int]) -> bytes:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip().encode()


def table(rows: list[list[str]], headers: list[str]) -> str:
    """A plain left-aligned text table (cells made :func:`printable`)."""
    rows = [[printable(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return "\n".join(lines)

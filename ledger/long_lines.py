"""Lines of any length, read in bounded memory.

Nearly every JSONL line is short, and ``readline(SPILL_AT)`` reads it whole in one
call. A line of more than ``SPILL_AT`` bytes (:func:`is_long`) is read on in pieces
of ``PIECE`` bytes into a temporary file as it arrives (:func:`read_long`), so a line
of gigabytes (which can only be rejected, being longer than an event may be) never
sits in memory. A long line that ends within the limit is read back into memory: it
is an event to validate. One beyond it stays on disk as a :class:`LongLine`, which
the reject file copies in pieces.
"""

from __future__ import annotations

import base64
import codecs
import tempfile
from collections.abc import Iterator
from typing import IO, Final

import orjson

from ledger.errors import OutputError

SPILL_AT = 2**20  # a line longer than this goes to a temporary file as it is read
PIECE = 2**18  # bytes read, written and encoded at a time
_ENDING: Final = b"\r\n"  # what ends a line: any run of these at its end
_CR: Final = b"\r"
UTF8_BOM: Final = b"\xef\xbb\xbf"


def is_long(text: bytes) -> bool:
    """Whether ``text``, read by ``readline(SPILL_AT)``, is the start of a longer line."""
    return len(text) == SPILL_AT and not text.endswith(b"\n")


def read_long(fh: IO[bytes], text: bytes, *, limit: int, keep: bool = True, skip: int = 0
              ) -> tuple[bytes | LongLine, int]:
    """A long line that begins with ``text`` (its first ``skip`` bytes not part of it),
    read on from ``fh``, and the bytes it took.

    The line comes without its ending, as bytes when it has at most ``limit`` bytes,
    else as a :class:`LongLine` (whose bytes are dropped unless ``keep``).
    """
    line = LongLine(limit=None if keep else limit, taken=skip)
    try:
        line.add(text[skip:])
        while (text := fh.readline(PIECE)):
            line.add(text)
            if text.endswith(b"\n"):
                break
        line.end()
        if len(line) > limit:
            return line, line.taken
        return line.read(), line.taken
    except BaseException:
        line.close()
        raise


class LongLine:
    """A line kept in a temporary file rather than in memory.

    ``len()`` is its size without its ending; ``taken`` counts the ending too;
    ``blank`` says whether it holds nothing but whitespace. With a ``limit`` its
    bytes are dropped once there are more than that (its size is still counted).
    """

    def __init__(self, limit: int | None = None, *, taken: int = 0) -> None:
        self._limit = limit
        self._file: IO[bytes] | None = None
        self._dropped = False  # beyond the limit: the bytes are no longer kept
        self._size = 0  # bytes kept or counted, without the ending
        self._crs = 0  # carriage returns read last: the ending, unless more of the line follows
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.taken = taken  # bytes read for it so far (a byte order mark before it counts)
        self.utf8 = True
        self.blank = True

    def __len__(self) -> int:
        return self._size

    def add(self, text: bytes) -> None:
        """Append bytes read from the line (the last of them ending with its ending)."""
        self.taken += len(text)
        body = text.rstrip(_ENDING)
        if not body:  # nothing but ending bytes: the carriage returns may yet be inside
            self._crs += text.count(_CR)
            return
        while self._crs:  # followed by more of the line: part of it after all
            crs = min(self._crs, PIECE)
            self._write(_CR * crs)
            self._crs -= crs
        self._write(body)
        self._crs = len(text) - len(body) - text.endswith(b"\n")

    def end(self) -> None:
        """Note the end of the line (the carriage returns held back were its ending)."""
        self._crs = 0
        if self.utf8 and self._file is not None:
            self._check_utf8(b"", final=True)

    def read(self) -> bytes:
        """The line's bytes (call once it is within the limit it was read with)."""
        data = b"".join(self.pieces(PIECE))
        self.close()
        return data

    def pieces(self, size: int) -> Iterator[bytes]:
        """The line's bytes, ``size`` at a time (the last piece may be shorter)."""
        file = self._file
        if file is None:
            if self._size == 0:  # nothing but its ending (a run of carriage returns)
                return
            raise ValueError("the bytes of this line were not kept")
        try:
            file.seek(0)
            while piece := file.read(size):
                yield piece
        except OSError as exc:
            raise _spill_failed(self._size, exc) from None

    def json_string(self) -> Iterator[bytes]:
        """The line as a JSON string, in pieces: its text when it is UTF-8 (the
        ``raw_encoding`` is then ``utf-8``), else its base64 (``base64``). Joined,
        the pieces are what ``orjson.dumps`` gives for the whole line's text."""
        yield b'"'
        if self.utf8:
            decoder = codecs.getincrementaldecoder("utf-8")()
            for piece in self.pieces(PIECE // 4):  # orjson reserves several times the size
                yield orjson.dumps(decoder.decode(piece))[1:-1]
        else:
            for piece in self.pieces(3 * PIECE):  # whole groups of 3 bytes: no padding
                yield base64.b64encode(piece)
        yield b'"'

    @property
    def encoding(self) -> str:
        return "utf-8" if self.utf8 else "base64"

    def close(self) -> None:
        """Remove the temporary file."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def _write(self, data: bytes) -> None:
        self._size += len(data)
        if self.blank and data.strip():
            self.blank = False
        if self._dropped:
            return
        if self._limit is not None and self._size > self._limit:
            self._dropped = True  # only its size matters now
            self.close()
            return
        if self._file is None:
            self._file = self._open()
        if self.utf8:
            self._check_utf8(data)
        try:
            self._file.write(data)
        except OSError as exc:
            self.close()
            raise _spill_failed(self._size, exc) from None

    def _check_utf8(self, data: bytes, *, final: bool = False) -> None:
        try:
            self._decoder.decode(data, final)
        except UnicodeDecodeError:
            self.utf8 = False

    def _open(self) -> IO[bytes]:
        try:
            return tempfile.TemporaryFile(prefix="agentledger-line-")
        except OSError as exc:
            raise _spill_failed(self._size, exc) from None


def _spill_failed(size: int, exc: OSError) -> OutputError:
    return OutputError(
        f"cannot keep a line of {size:,} bytes or more in a temporary file in "
        f"{tempfile.gettempdir()} ({exc.strerror or exc}): lines this long are read to "
        "disk, not into memory; free space there, or point TMPDIR elsewhere, and run "
        "the same ingest again")

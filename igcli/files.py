"""The files igcli reads and writes for a user: one way in, one way out.

- ``open_input``: a user's input file opened once, by its literal name. DuckDB's ``read_csv`` and
  ``read_parquet`` expand ``* ? [ ]`` in a path (``a[1].csv`` reads ``a1.csv``, ``b*.csv`` reads several
  files), so DuckDB and pyarrow are handed the open file itself (``/proc/self/fd/N``), never the name. Every
  read of it sees the same file, even if the name is replaced meanwhile, and ``check_unchanged`` tells
  whether it was written to while it was read.
- ``atomic_write``: every output file (``score --out``, ``report --out``, the exports). The bytes go to a
  new file with a random name in the target's folder, created with ``O_EXCL`` (a link planted at any name
  is never followed), and ``os.replace`` puts it in place whole: a link at the target is replaced, its target
  never written; a failed write leaves the old file as it was.
- ``spreadsheet_safe``: text cells of an output CSV that a spreadsheet would run as a formula.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc

from igcli.errors import InputError, OutputError

GLOB_CHARS = frozenset("*?[]{}")
_FD_DIR = "/proc/self/fd"   # Linux: opening /proc/self/fd/N opens the file N is open on, by no name


@dataclass
class InputFile:
    """A user's input, open for the whole command. ``name`` is what DuckDB or pyarrow is given to read it."""

    path: Path                 # as the user named it (for messages)
    fd: int
    opened: os.stat_result     # fstat when it was opened

    @property
    def name(self) -> str:
        if os.path.isdir(_FD_DIR):
            return f"{_FD_DIR}/{self.fd}"
        # elsewhere the path itself, which must not be a pattern (open_input refused one)
        return str(self.path.absolute())

    def check_unchanged(self) -> None:
        """``InputError`` when the file was written to since it was opened: its size, mtime or ctime moved (a
        rename over its name moves the ctime too: the open file lost a link)."""
        now = os.fstat(self.fd)
        if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
                self.opened.st_size, self.opened.st_mtime_ns, self.opened.st_ctime_ns):
            raise InputError(f"{self.path} changed while it was being read; nothing was stored: ingest it "
                             "again once whatever writes it has finished")


@contextmanager
def open_input(path: Path | str, what: str = "file") -> Iterator[InputFile]:
    """``path`` opened for reading as a regular file (never waiting on a FIFO or a device), closed after
    the block. ``InputError`` naming the problem otherwise."""
    path = Path(path)
    if not os.path.isdir(_FD_DIR) and GLOB_CHARS & set(str(path)):
        raise InputError(f"{path}: a {what} name with * ? [ ] {{ }} can only be read literally on Linux; "
                         "rename the file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a {what}: name the file") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path} is a folder, not a {what}: name the file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path} is not a regular file (a pipe, socket or device): save the {what} to a "
                             "file and pass that")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)   # O_NONBLOCK only kept the open from waiting on a FIFO
        yield InputFile(path, fd, st)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: Path | str, what: str = "--out") -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; in place only when the block ends without error.

    A new file with a random name in ``path``'s folder (``O_CREAT | O_EXCL | O_NOFOLLOW``: never a file or
    link already there), flushed to disk, then renamed over ``path``. It keeps the mode of a regular file it
    replaces, else gets the umask's. ``OutputError`` naming the fix when the folder cannot take it."""
    path = Path(path)
    check_output(path, what)
    fd, tmp = _exclusive(path, what)
    try:
        try:
            old = os.lstat(path)
            if stat.S_ISREG(old.st_mode) and hasattr(os, "fchmod"):
                os.fchmod(fd, stat.S_IMODE(old.st_mode))
        except FileNotFoundError:
            pass
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise OutputError(f"cannot write {path}: {err.strerror or err}; pass {what} a path in a writable "
                          "folder") from None
    except BaseException:
        _discard(tmp)
        raise


def check_output(path: Path | str, what: str = "--out") -> None:
    """Refuse, before any work, an output path that cannot be written: a missing folder or a folder name."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: the folder {folder} does not exist; create it or pass another path")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder: pass a file name")


def _exclusive(path: Path, what: str) -> tuple[int, str]:
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
             | getattr(os, "O_BINARY", 0))
    for _ in range(16):
        tmp = str(path.parent / f".{path.name[:96]}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue           # a name taken (planted, or our own by chance): draw another
        except OSError as err:
            raise OutputError(f"cannot write {path}: {err.strerror}; pass {what} a path in a writable folder") \
                from None
    raise OutputError(f"cannot write {path}: no free temporary name in {path.parent}")


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


# Cells a spreadsheet runs as a formula: a leading = + - @ (or tab / CR, which some strip first), unless the
# cell is a plain number. OWASP's advice: prefix such a cell with an apostrophe.
FORMULA_START = r"^[=+\-@\t\r]"
PLAIN_NUMBER = r"^[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$"


def spreadsheet_safe(table: pa.Table) -> pa.Table:
    """``table`` with each text cell that a spreadsheet would run as a formula prefixed with ``'``."""
    for i, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        col = table.column(i)
        risky = pc.and_(pc.match_substring_regex(col, FORMULA_START),
                        pc.invert(pc.match_substring_regex(col, PLAIN_NUMBER)))
        if pc.any(risky).as_py():
            table = table.set_column(i, field, pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col))
    return table


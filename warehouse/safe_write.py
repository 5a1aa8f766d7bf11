"""One way to write a file a person named (``python -m warehouse export -o``, unit bundles).

What the name is decides how it is written, by ``lstat`` (never following a link to decide):

- ``-``: streamed to standard output.
- nothing there: written to a temporary file beside it, synced, then linked into place with
  ``os.link``, which fails rather than replace anything that appeared meanwhile.
- a regular file: replaced the same way (``os.replace``), only with ``force``; its mode is kept.
- a character device or a FIFO (``/dev/null``, a named pipe), also through a symbolic link such as
  ``/dev/stdout`` -> ``/proc/self/fd/1``: opened and streamed into, never renamed over.
- anything else is refused: a folder, a block device, a socket, and a symbolic link to a file or
  to nothing (writing through it would change a file elsewhere, renaming over it would destroy the
  link: name the file itself).

So a rename only ever replaces a regular file the person named, and a failed write leaves the
target as it was (a partial temporary file is removed). ``check_target`` applies these rules before
any work, and for a file to be made or replaced also creates and removes a file in its folder, so
a read-only or virtual folder is refused before the export computes its table.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from warehouse.errors import WarehouseError

STDOUT = "-"


def is_stream(out: Path | str) -> bool:
    """Whether writing ``out`` streams into it (stdout, a character device, a FIFO) instead of making a file."""
    if str(out) == STDOUT:
        return True
    try:
        st = os.stat(out)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)


def check_target(out: Path | str, force: bool) -> None:
    """Refuse, before any work, a target that ``write_output`` would refuse (same rules, one message each)."""
    if str(out) == STDOUT:
        return
    out = Path(out)
    try:
        st = os.lstat(out)
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file named as a folder on the way
        _check_folder(out)
        return
    except OSError as e:
        raise WarehouseError(f"cannot write {out}: {e.strerror or e}.") from None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(out)
        except OSError:
            raise WarehouseError(f"{out} is a symbolic link to {os.readlink(out)}, which does not exist; name the "
                                 f"file to write itself, not a link.") from None
        if not (stat.S_ISCHR(target.st_mode) or stat.S_ISFIFO(target.st_mode)):
            raise WarehouseError(f"{out} is a symbolic link (to {os.readlink(out)}); it is neither followed nor "
                                 f"replaced. Name the file to write itself.")
        return
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise WarehouseError(f"{out} is a folder; give a file name such as units.csv.")
    if not stat.S_ISREG(st.st_mode):
        raise WarehouseError(f"{out} is not a regular file (a block device or a socket); it is never written. "
                             f"Choose another -o.")
    if not force:
        raise WarehouseError(f"{out} already exists; pass --force to replace it or choose another -o.")
    _check_folder(out)


def _check_folder(out: Path) -> None:
    """Refuse ``out`` unless its folder exists and takes a new file: one is created there and removed
    (a read-only mount, /proc or /sys, a full disk, no permission, a file named as a folder), so the
    refusal comes before the work, not after the table is computed."""
    folder = out.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise WarehouseError(f"cannot write {out}: its folder {folder} {what}; create the folder or choose "
                             f"another -o.") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name[:64]}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise WarehouseError(_cannot_create(out, e)) from None
    os.close(fd)
    os.unlink(probe)


def _cannot_create(out: Path, e: OSError) -> str:
    return (f"cannot write {out}: cannot create a file in {out.parent} ({e.strerror or e}); choose a folder "
            f"you can write to.")


def write_output(out: Path | str, write: Callable[[BinaryIO], None], force: bool = False) -> None:
    """Write what ``write(file)`` writes to ``out`` by the rules of this module; ``WarehouseError`` otherwise."""
    check_target(out, force)
    if is_stream(out):
        try:
            if str(out) == STDOUT:
                write(sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                with open(os.open(out, os.O_WRONLY | os.O_CLOEXEC), "wb") as f:  # no O_CREAT: it exists
                    write(f)
        except OSError as e:
            raise WarehouseError(f"cannot write to {out}: {e.strerror or e}.") from None
        return
    out = Path(out)
    try:
        existing = os.lstat(out)
    except FileNotFoundError:
        existing = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name[:64]}.", suffix=".tmp", dir=out.parent)
    except OSError as e:  # the folder changed since check_target
        raise WarehouseError(_cannot_create(out, e)) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, stat.S_IMODE(existing.st_mode) if existing else 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if existing is None:
            _move_new(tmp, out)
        else:
            os.replace(tmp, out)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise WarehouseError(f"cannot write {out}: {e.strerror or e}.") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _move_new(tmp: str, out: Path) -> None:
    """Move ``tmp`` to ``out`` only if nothing is there: ``os.link`` fails rather than replace."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise WarehouseError(f"{out} appeared while the export was being written; it is left as it is. Run "
                             f"again (with --force to replace a file).") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if os.path.lexists(out):  # a file system without hard links: check, then rename
            raise WarehouseError(f"{out} appeared while the export was being written; it is left as it is.") from None
        os.rename(tmp, out)
        return
    os.unlink(tmp)

"""User-named outputs (export, bundles) by class of target: what is there decides how it is written,
and nothing but a regular file the user named is ever renamed over (``warehouse/safe_write.py``)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from warehouse.errors import WarehouseError
from warehouse.safe_write import check_target, write_output

REPO = Path(__file__).resolve().parents[1]
DATA = b"layer,unit\nfc1,3\n"
OLD = b"precious"


def _write(f) -> None:
    f.write(DATA)


def _fifo_reader(path: Path, got: list[bytes]) -> threading.Thread:
    t = threading.Thread(target=lambda: got.append(path.read_bytes()), daemon=True)
    t.start()
    return t


# class -> (make the target in tmp_path and return the name to write, force, expected: "written" |
# "streamed" | a message the refusal must contain)
def _absent(d: Path) -> Path:
    return d / "new.csv"


def _regular(d: Path) -> Path:
    (d / "old.csv").write_bytes(OLD)
    os.chmod(d / "old.csv", 0o640)
    return d / "old.csv"


def _link_to_file(d: Path) -> Path:
    (d / "elsewhere.csv").write_bytes(OLD)
    (d / "link.csv").symlink_to(d / "elsewhere.csv")
    return d / "link.csv"


def _dangling_link(d: Path) -> Path:
    (d / "link.csv").symlink_to(d / "nowhere" / "x.csv")
    return d / "link.csv"


def _link_to_folder(d: Path) -> Path:
    (d / "folder").mkdir()
    (d / "link.csv").symlink_to(d / "folder")
    return d / "link.csv"


def _folder(d: Path) -> Path:
    (d / "out.csv").mkdir()
    return d / "out.csv"


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe")
    return d / "pipe"


def _link_to_fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe")
    (d / "link").symlink_to(d / "pipe")
    return d / "link"


def _socket(d: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    s.close()
    return d / "sock"


def _missing_folder(d: Path) -> Path:
    return d / "no" / "out.csv"


CASES: dict[str, tuple[Callable[[Path], Path], bool, str]] = {
    "absent": (_absent, False, "written"),
    "regular-without-force": (_regular, False, "already exists; pass --force"),
    "regular-with-force": (_regular, True, "written"),
    "link-to-file": (_link_to_file, False, "is a symbolic link"),
    "link-to-file-with-force": (_link_to_file, True, "is a symbolic link"),
    "dangling-link": (_dangling_link, True, "does not exist"),
    "link-to-folder": (_link_to_folder, True, "is a symbolic link"),
    "folder": (_folder, True, "is a folder"),
    "socket": (_socket, True, "not a regular file"),
    "fifo": (_fifo, False, "streamed"),
    "link-to-fifo": (_link_to_fifo, False, "streamed"),
    "missing-folder": (_missing_folder, False, "no does not exist; create the folder"),
}


def _snapshot(d: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Every entry under ``d``: its type and content (files), link target (links); what must not change."""
    out = {}
    for p in sorted(d.rglob("*")):
        st = os.lstat(p)
        content = os.readlink(p) if stat.S_ISLNK(st.st_mode) else p.read_bytes() if stat.S_ISREG(st.st_mode) else None
        out[str(p.relative_to(d))] = (stat.S_IFMT(st.st_mode), content)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_each_class_of_target_is_written_streamed_or_refused(case, tmp_path):
    make, force, expected = CASES[case]
    out = make(tmp_path)
    before = _snapshot(tmp_path)
    got: list[bytes] = []
    reader = _fifo_reader(out, got) if expected == "streamed" else None
    if expected in ("written", "streamed"):
        write_output(out, _write, force=force)
    else:
        with pytest.raises(WarehouseError, match=expected):
            write_output(out, _write, force=force)
    after = _snapshot(tmp_path)
    if expected == "written":
        assert out.read_bytes() == DATA and stat.S_ISREG(os.lstat(out).st_mode)
        mode = 0o640 if case.startswith("regular") else 0o666 & ~_umask()
        assert stat.S_IMODE(os.lstat(out).st_mode) == mode
        after.pop(out.name)
        before.pop(out.name, None)
    if reader:
        reader.join(10)
        assert got == [DATA]
    assert after == before, "nothing else changed: links, their targets, pipes, folders; no temporary file left"


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_failed_write_leaves_the_target_as_it_was(tmp_path):
    out = _regular(tmp_path)

    def fail(f) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WarehouseError, match="No space left"):
        write_output(out, fail, force=True)
    assert out.read_bytes() == OLD and [p.name for p in tmp_path.iterdir()] == ["old.csv"]


@pytest.mark.parametrize("folder", ["/proc", "read-only"])
def test_a_folder_where_no_file_can_be_created_is_one_paragraph(tmp_path, folder):
    """/proc refuses new files even to root; a read-only folder refuses them to anyone else."""
    if folder == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        (tmp_path / "ro").mkdir(mode=0o555)
        folder = str(tmp_path / "ro")
    with pytest.raises(WarehouseError, match="cannot create a file in"):
        write_output(Path(folder) / "units.csv", _write)


@pytest.mark.parametrize("make, force, message", [
    (lambda d: Path("/proc/units.csv"), False, "cannot create a file in /proc"),
    (lambda d: Path("/proc/version"), True, "cannot create a file in /proc"),  # replacing needs a new file too
    (lambda d: d / "missing" / "units.csv", False, "missing does not exist"),
    (lambda d: (d / "plain").write_bytes(OLD) and d / "plain" / "units.csv", False, "plain is a file, not a folder"),
])
def test_check_target_refuses_a_folder_that_takes_no_file_before_any_work(tmp_path, make, force, message):
    """The export command line calls ``check_target`` before it computes the table."""
    with pytest.raises(WarehouseError, match=message) as e:
        check_target(make(tmp_path), force)
    assert "\n" not in str(e.value) and "choose" in str(e.value)


def test_check_target_leaves_no_trace_in_a_writable_folder(tmp_path):
    check_target(tmp_path / "units.csv", False)
    (tmp_path / "old.csv").write_bytes(OLD)
    check_target(tmp_path / "old.csv", True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"] and (tmp_path / "old.csv").read_bytes() == OLD


@pytest.mark.parametrize("out", ["/proc/units.csv", "/etc/hostname/units.csv", "/nonexistent-folder/units.csv"])
def test_export_refuses_an_unwritable_folder_in_one_paragraph(out, warehouse_root):
    from tests.dashboard_fixtures import RUN_ID

    r = subprocess.run([sys.executable, "-m", "warehouse", "export", "--warehouse", str(warehouse_root), "--run", RUN_ID,
                        "-o", out], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"error: cannot write {out}: ") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_dev_null_is_streamed_into_and_stays_a_device():
    write_output(Path("/dev/null"), _write)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a block device needs root")
def test_a_block_device_is_never_written(tmp_path):
    os.mknod(tmp_path / "disk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    with pytest.raises(WarehouseError, match="block device"):
        write_output(tmp_path / "disk", _write, force=True)
    assert stat.S_ISBLK(os.lstat(tmp_path / "disk").st_mode)


@pytest.mark.parametrize("target", ["-", "/dev/stdout"])
def test_export_to_stdout_streams_and_leaves_dev_stdout_a_link(target, warehouse_root):
    """The issue's case: ``-o /dev/stdout`` (as root) replaced the /dev/stdout link with a file."""
    from tests.dashboard_fixtures import RUN_ID

    link = os.readlink("/dev/stdout")
    r = subprocess.run([sys.executable, "-m", "warehouse", "export", "--warehouse", str(warehouse_root), "--run", RUN_ID,
                        "--layer", "fc2", "--format", "csv", "-o", target], cwd=REPO, capture_output=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[0].startswith('"run_id",') and len(lines) == 1 + 84  # fc2's 84 units, nothing else on stdout
    assert b"wrote 84 units" in r.stderr
    assert os.path.islink("/dev/stdout") and os.readlink("/dev/stdout") == link


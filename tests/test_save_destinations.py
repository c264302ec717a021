"""Where save_pretrained and the command line write: results replaced whole or not at all, and
destinations that cannot work refused before any work."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

import magnet
import magnet.save as save_module
from magnet.save import write_file_atomically


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    """The CLI's --json and --out files and python -m magnet.eval --out were opened in place:
    a full disk left a truncated file (an unreadable .npy, an empty results file)."""
    target = tmp_path / "results.json"
    target.write_text('{"old": true}\n')

    def fails_halfway(f) -> None:
        f.write(b'{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device"):
        write_file_atomically(target, fails_halfway)
    assert target.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary left

    def numpy_short_write(f) -> None:  # numpy's tofile reports a short write without errno
        raise OSError("12800 requested and 992 written")

    with pytest.raises(OSError, match="is the disk full"):
        write_file_atomically(target, numpy_short_write)
    write_file_atomically(target, lambda f: np.save(f, np.arange(3)))
    np.testing.assert_array_equal(np.load(target), np.arange(3))


def test_an_atomic_write_keeps_the_mode_and_writes_through_links(tmp_path: Path) -> None:
    target = tmp_path / "vecs.npy"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.npy"
    link.symlink_to(target)
    write_file_atomically(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o640
    write_file_atomically("/dev/null", lambda f: f.write(b"x"))  # a device: written in place
    assert Path("/dev/null").is_char_device()


def test_dev_stdout_redirected_to_a_file_is_written_in_place(tmp_path: Path) -> None:
    """Through /dev/stdout a redirected stdout is a regular file: it was replaced, and what the
    process printed afterwards went to the unlinked old file."""
    import subprocess
    import sys

    code = ("from magnet.save import write_file_atomically\n"
            "write_file_atomically('/dev/stdout', lambda f: f.write(b'payload\\n'))\n"
            "print('after', flush=True)\n")
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=60)
    assert out.read_text() == "payload\nafter\n"


def test_a_mount_point_is_refused_before_any_work(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A mount point cannot be renamed: `--out /out` on a container's mounted volume trained
    first and then failed with 'Device or resource busy'."""
    out = tmp_path / "mnt"
    out.mkdir()
    real = save_module._is_mount_point
    monkeypatch.setattr(save_module, "_is_mount_point",
                        lambda p: os.fspath(p) == os.fspath(out) or real(p))
    with pytest.raises(ValueError, match="it is a mount point.*save into a subdirectory"):
        save_module.check_target_dir(out)
    save_module.check_target_dir(out / "model")  # a subdirectory is fine


def test_the_mount_table_names_mount_points() -> None:
    assert save_module._is_mount_point(Path("/"))
    assert save_module._is_mount_point(Path("/proc")) == os.path.ismount("/proc")
    assert not save_module._is_mount_point(Path(__file__).resolve().parent)


def test_a_long_directory_name_saves(tmp_path: Path) -> None:
    """The temporary beside the directory added the host, the pid and random letters to its
    name: a legal 240-character name failed with 'File name too long' after training."""
    m = magnet.Model.from_pretrained("stories260K")
    out = m.save_pretrained(tmp_path / ("m" * 240))
    again = m.save_pretrained(out)  # over an existing one: the .old- name too
    np.testing.assert_array_equal(magnet.Model.from_pretrained(again).logits([1, 5]),
                                  m.logits([1, 5]))


def test_a_save_cut_between_the_two_renames_is_put_back(tmp_path: Path) -> None:
    """Without renameat2 (vfat, some FUSE file systems) a save swaps the directories in two
    renames; a crash between them left only .NAME.old-PID, which no later save looked at."""
    import subprocess
    import sys

    m = magnet.Model.from_pretrained("stories260K")
    out = m.save_pretrained(tmp_path / "model")
    (out / "notes.txt").write_text("mine")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.rename(out, tmp_path / f".model.old-{dead.pid}")  # as the killed save left it
    m.save_pretrained(out)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

"""save_pretrained: a Hugging Face model directory (config.json, model.safetensors, tokenizer),
with LoRA adapters merged or kept as a PEFT-style adapter, written so that a crash at any
moment leaves the previous directory intact. Files in that directory that are not model files
(notes, training checkpoints) are kept."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from magnet.formats.huggingface import (
    config_to_hf,
    generation_config_to_hf,
    tensors_to_hf,
    tokenizer_to_hf,
    write_safetensors,
)
from magnet.formats.peft import TARGETS, adapter_from_peft, adapter_to_peft, read_metadata

# At run time, not for type checkers only, so that typing.get_type_hints resolves `Model`:
# magnet.model imports this module lazily (inside its methods), so there is no cycle.
from magnet.model import Model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


# What save_pretrained writes, and what would contradict it if left beside it (other weight
# files, shards and their index, a stale adapter). Everything else in an existing directory
# belongs to the user (notes, checkpoints, other files) and is carried into the new one.
_OWNED = re.compile(r"config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json"
                    r"|model\.safetensors|model\.safetensors\.index\.json"
                    r"|model-\d+-of-\d+\.safetensors|pytorch_model.*\.bin(\.index\.json)?"
                    r"|adapter_config\.json|adapter_model\.safetensors"
                    # transformers 5's template file: a stale one would win over the saved
                    # tokenizer_config.json's template when read back
                    r"|chat_template\.jinja|additional_chat_templates")


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """A hard link costs no space or time; copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _carry_over(old: Path, new: Path) -> None:
    """Put the user's entries of the directory being replaced into its replacement."""
    for entry in os.scandir(old):
        dst = new / entry.name
        if _OWNED.fullmatch(entry.name) or os.path.lexists(dst):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry.path, dst)


def _is_mount_point(path: Path) -> bool:
    """Whether something is mounted at ``path`` (which cannot then be renamed). Read from the
    mount table where there is one: os.path.ismount also says yes for a btrfs subvolume, which
    renames like any directory."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            points = {re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
                      for line in f if len(line.split()) > 4}
    except OSError:
        return os.path.ismount(path)
    return os.fspath(path) in points


def check_target_dir(path: str | os.PathLike, what: str = "out_dir",
                     replaced: bool = True) -> Path:
    """The real path of the directory ``path``, checked before any work so that a long run does
    not fail at its end: not a file, somewhere a directory can be made, and (``replaced``: the
    directory is swapped as a whole, as save_pretrained does) not the working directory or one
    above it. Errors name ``what`` (the parameter or option) and the path."""
    given = os.fspath(path)
    out = Path(os.path.realpath(given))  # a symlinked directory: write where it points
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{what} {given!r} exists and is not a directory")
    cwd = Path(os.path.realpath(os.getcwd()))
    if replaced and out.is_dir() and _is_mount_point(out):
        raise ValueError(
            f"cannot save into {what} {given!r}: it is a mount point, and save_pretrained "
            "replaces the directory as a whole (a rename, which a mount point refuses) so that "
            "a crash never leaves half a model; save into a subdirectory"
        )
    if replaced and (out == cwd or out in cwd.parents):
        raise ValueError(
            f"cannot save into {what} {given!r}: it is (or holds) the current working directory, "
            "and save_pretrained replaces the directory as a whole so that a crash never leaves "
            "half a model; save into a subdirectory"
        )
    # what gets written: a temporary beside the directory (replaced) or inside it; the nearest
    # existing directory on the way is where the first new entry is made
    where = out.parent if replaced or not out.is_dir() else out
    while not where.exists():
        where = where.parent
    if not where.is_dir():
        raise NotADirectoryError(f"{what} {given!r}: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {given!r}: directory {where} is not writable")
    return out


# Temporaries are named after this host and process, so that the next save can tell one left
# by a killed process (SIGKILL runs no cleanup) from one that a live process is writing.
_HOST = re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname())[:32] or "host"


def _process_start() -> float:
    """When this process started, as a time.time() (Linux: /proc's start, in clock ticks since
    boot); where unknown, -inf, so that nothing counts as stale."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        since = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since
    except (OSError, ValueError, IndexError, AttributeError):
        return float("-inf")


_STARTED = _process_start()


def temp_prefix(prefix: str) -> str:
    """``prefix`` tagged with this host and process id, for mkstemp / mkdtemp."""
    return f"{prefix}{_HOST}-{os.getpid()}-"


def _hidden(name: str, tag: str) -> str:
    """The start of the hidden names beside ``name`` (``.NAME.tmp-``, ``.NAME.old-``), the name
    cut so that the whole (with the host, the pid and mkstemp's letters added) stays within the
    usual 255-byte limit."""
    raw = os.fsencode(name)
    short = name if len(raw) <= 120 else raw[:120].decode(errors="ignore")
    return f".{short}.{tag}-"


def _in_place(path: str | os.PathLike) -> bool:
    """Whether ``path`` is written in place rather than replaced: a device or a pipe, and any
    /dev or /proc name (/dev/stdout redirected to a file is a regular file through its link,
    and replacing that file would send the rest of the process's output nowhere)."""
    given = os.path.abspath(os.fspath(path))
    if given.startswith(("/dev/", "/proc/")):
        return True
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # not there yet (or a dangling link: made where it points)
        return False


def check_writable_file(path: str, option: str) -> None:
    """Fail early (before a model is loaded and the work done) when the file ``path`` cannot be
    written by write_file_atomically; errors name ``option`` and the path."""
    p = Path(path)
    if p.is_dir() or path.endswith(("/", os.sep)):  # Path() drops a trailing slash
        raise ValueError(f"{option} {path}: is a directory")
    if _in_place(path) and p.exists():
        if not os.access(p, os.W_OK):
            raise ValueError(f"{option} {path}: not writable")
        return
    parent = Path(os.path.realpath(path)).parent  # the temporary goes beside the real file
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: directory {os.fspath(parent)} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"{option} {path}: not writable")


def write_file_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through ``write(f)`` into a temporary beside it, then rename it over
    ``path``: a failure (a full disk, Ctrl-C) leaves the previous file whole. A symlink is
    written through (its target is replaced). A short write that numpy reports without an
    errno is named as such."""
    given = os.path.abspath(os.fspath(path))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        if given in (f"/dev/{name}", f"/dev/fd/{fd}", f"/proc/self/fd/{fd}") and hasattr(
                stream, "buffer"):
            # through the process's own stream: opening the name again would start a second
            # offset at 0 in a redirected file, and what the process prints later would
            # overwrite it
            stream.flush()
            write(stream.buffer)
            stream.buffer.flush()
            return
    if _in_place(path):  # a device or a pipe: nothing to rename
        with open(path, "wb") as f:
            write(f)
        return
    target = Path(os.path.realpath(os.fspath(path)))
    prefix = _hidden(target.name, "tmp")
    remove_stale_temps(target.parent, prefix)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(prefix), dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                if e.errno is not None:
                    raise
                raise OSError(f"writing {os.fspath(path)} failed ({e}): is the disk full?"
                              ) from None
        try:  # the mode a plain open() would give, or the replaced file's
            mode = target.stat().st_mode & 0o7777
        except OSError:
            mode = _default_dir_mode() & 0o666
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's (EPERM), or no such pid: keep its files
        return True
    return True


def _newest_mtime(path: str) -> float:
    newest = os.lstat(path).st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def _left_by_dead_processes(directory: str | os.PathLike, pattern: re.Pattern[str]
                            ) -> list[os.DirEntry[str]]:
    """The entries of ``directory`` whose names match ``pattern``, whose first group is the
    process id that made them, when that process is gone (not this one, not a live one)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    found = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is not None and int(m[1]) != os.getpid() and not _alive(int(m[1])):
            found.append(entry)
    return found


def remove_stale_temps(directory: str | os.PathLike, prefix: str, suffix: str = "") -> None:
    """Delete what killed processes left in ``directory`` under ``temp_prefix(prefix)``: only
    names of that pattern made on this host, whose process is gone, and unchanged since this
    process started (a process in another PID namespace that shares the directory may still be
    writing its own). Older names without the host and process are never touched."""
    pattern = re.compile(re.escape(prefix + _HOST) + r"-(\d+)-[A-Za-z0-9_]+" + re.escape(suffix))
    for entry in _left_by_dead_processes(directory, pattern):
        try:
            if _newest_mtime(entry.path) >= _STARTED:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:  # gone already, or not ours to remove: leave it
            continue


def _default_dir_mode() -> int:
    """0o777 less the process umask (mkdtemp makes 0o700 directories)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o777 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o755


def _restore_interrupted_swap(out: Path) -> None:
    """Without renameat2 a save swaps directories in two renames (the old one to
    ``.NAME.old-PID``, the new one to NAME), and a crash between them leaves no NAME. Put the
    old directory back before saving again, so that the user's files in it are carried over
    and the hidden copy is not left behind for ever."""
    if os.path.lexists(out):
        return
    pattern = re.compile(re.escape(_hidden(out.name, "old")) + r"(\d+)")
    for entry in _left_by_dead_processes(out.parent, pattern):
        if entry.is_dir(follow_symlinks=False):
            try:
                os.replace(entry.path, out)
            except OSError:
                continue
            return


def _publish(tmp: Path, out: Path) -> None:
    """Make ``tmp`` appear at ``out``; an existing ``out`` stays whole until the switch, and
    the user's own files in it are carried over (hard links). Saves into one directory take
    turns (a lock on its parent): one that carried over the user's files while another swapped
    the directory out and deleted it published an incomplete copy, and the user's files that
    it had not reached yet were lost."""
    try:
        lock = os.open(out.parent, os.O_RDONLY)
    except OSError:
        lock = -1
    try:
        if lock >= 0:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            except OSError:  # a file system without locks: go on as before
                pass
        _publish_locked(tmp, out)
    finally:
        if lock >= 0:
            os.close(lock)  # releases the lock


def _publish_locked(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.chmod(tmp, _default_dir_mode())
        os.replace(tmp, out)
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    os.chmod(tmp, out.stat().st_mode & 0o7777)
    _carry_over(out, tmp)
    if _exchange(tmp, out):
        shutil.rmtree(tmp)
        return
    old = out.with_name(f"{_hidden(out.name, 'old')}{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old)


def save_pretrained(model: Model, out_dir: str | os.PathLike, merge_lora: bool = True) -> Path:
    """Write ``model`` as a Hugging Face directory; returns its path.

    With adapters attached: ``merge_lora=True`` writes W + (alpha/r) B A into the weights;
    ``merge_lora=False`` writes the base weights plus ``adapter_config.json`` and
    ``adapter_model.safetensors`` in peft's layout (see magnet.formats.peft), which
    transformers, peft and magnet load with the adapter applied. The model in memory is not
    changed.
    """
    given = Path(out_dir)
    out = check_target_dir(out_dir, "out_dir")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(parent, _hidden(out.name, "tmp"))
    _restore_interrupted_swap(out)
    # one read of the weights and the adapters together: a merge_lora() or an adapt() step in
    # another thread cannot land between them
    lora, tensors, adapter = model._c.snapshot()
    if lora and merge_lora:
        scale = lora[1] / lora[0]
        for name in {n.rsplit(".", 1)[0] for n in adapter}:
            A, B = adapter[name + ".lora_A"], adapter[name + ".lora_B"]
            tensors[name + ".weight"] = tensors[name + ".weight"] + scale * (B @ A)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(_hidden(out.name, "tmp")), dir=parent))
    try:
        cfg = config_to_hf(model.config, tensors)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
        (tmp / "generation_config.json").write_text(
            json.dumps(generation_config_to_hf(model.config), indent=2))
        write_safetensors(tmp / "model.safetensors", tensors_to_hf(model.config, tensors),
                          {"format": "pt"})
        if model.tokenizer is not None:
            tok_json, tok_cfg = tokenizer_to_hf(model.tokenizer)
            (tmp / "tokenizer.json").write_text(tok_json, encoding="utf-8")
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2),
                                                       encoding="utf-8")
        if lora and not merge_lora:
            rank, alpha, mask = lora
            targets = [t for bit, t in enumerate(TARGETS) if mask >> bit & 1]
            # peft's AutoPeftModelForCausalLM loads the base from here (transformers reads a
            # directory with its own config.json and ignores the name)
            cfg, peft_tensors, meta = adapter_to_peft(model.config, rank, alpha, targets,
                                                      adapter, os.fspath(out))
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2))
            write_safetensors(tmp / ADAPTER_WEIGHTS, peft_tensors, {"format": "pt", **meta})
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given


def load_adapter(model: Model, directory: Path) -> None:
    """Attach the adapter saved beside a model: by ``save_pretrained(merge_lora=False)``, or a
    LoRA adapter that peft wrote (``PeftModel.save_pretrained``)."""
    from magnet import _C

    where = directory / ADAPTER_CONFIG
    try:
        cfg = json.loads(where.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not a JSON adapter config ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: not a JSON adapter config (a {type(cfg).__name__})")
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing (the adapter's weights, beside {where.name})")
    state = _C.read_safetensors(os.fspath(weights))
    rank, alpha, targets, tensors = adapter_from_peft(model.config, cfg, state,
                                                      read_metadata(weights), where)
    mask = sum(1 << TARGETS.index(t) for t in targets)
    model._c.attach_lora(rank, alpha, mask, 0)
    model._c.load_lora_state_dict({k: np.ascontiguousarray(v) for k, v in tensors.items()})

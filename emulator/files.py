"""The file boundary: every file a user or an earlier run hands us is read here, every file a run keeps is
written here.

A read that fails ends in one ``ValueError`` line naming the file and what is wrong with it (missing,
unreadable, truncated, not JSON, not a safetensors file); callers add what to do about it. A write goes to a
temporary name beside its target and is renamed into place (``replacing``): a failure, a full disk say,
leaves the previous target as it was and no temporary behind, and ends in one ``FileWriteError`` line naming
the target and the reason. A file's content hash (``file_sha256``: bundles, GGUF stamps) is taken here too.
Torch-free, so configs and run files can be read without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from safetensors import SafetensorError


class FileWriteError(OSError):
    """A file or directory could not be written; ``str()`` is one line naming it and the reason."""


def read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path``.

    Raises:
        ValueError: the file is missing or unreadable, or is not valid JSON (truncated, say); one line that
            names the file.
    """
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}; "
            f"{len(text)} characters): truncated or edited"
        ) from None


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSON Lines file (blank lines skipped); ``[]`` when it does not exist.

    Raises:
        ValueError: a line is not valid JSON (a write cut short, say); one line naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path} line {number} is not valid JSON ({error.msg}): cut short or edited; remove that line"
            ) from None
    return records


def read_tensors(
    path: str | Path, framework: Literal["pt", "numpy"] = "pt", device: str = "cpu"
) -> dict[str, Any]:
    """The tensors of a safetensors file, as torch tensors on ``device`` or as NumPy arrays.

    Raises:
        ValueError: the file is missing, unreadable or not a complete safetensors file; one line that names
            the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        if framework == "numpy":
            from safetensors.numpy import load_file as load_numpy

            return load_numpy(str(path))
        from safetensors.torch import load_file as load_torch

        return load_torch(str(path), device=device)
    except (SafetensorError, OSError) as error:
        reason = one_line(error)
        raise ValueError(f"{path} is not a readable safetensors file ({reason}): truncated?") from None


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically.

    Raises:
        FileWriteError: it could not be written (``path`` is then unchanged).
    """
    with replacing(Path(path)) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    Raises:
        FileWriteError: it could not be written (``path`` is then unchanged).
    """
    with replacing(Path(path)) as tmp:
        tmp.write_bytes(data)


def temporary_path(target: Path) -> Path:
    """A fresh name beside ``target`` to write it under first: ``.NAME.tmp-PID-RANDOM``. Unique per process
    and per call, so two processes (or two threads of one) filling the same cache entry never write into
    each other's temporary; ``remove_temporaries`` finds what a killed writer left."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def replacing(target: Path, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary path beside ``target`` (``temporary_path``) to write a file or a directory into; renamed
    onto ``target`` when the block ends without error.

    Args:
        target: the file or directory to write.
        keep_existing: a directory already at ``target`` when the block ends (another process finished the
            same cache entry first) is kept and the new one dropped; by default it is removed and replaced.

    On any error the temporary is removed; an ``OSError`` or a safetensors write error (the disk filled, a
    permission) becomes a ``FileWriteError`` naming ``target``, a failure inside a nested ``replacing``
    keeps the innermost file's name.

    Raises:
        FileWriteError: the temporary could not be written or renamed.
    """
    tmp = temporary_path(target)
    try:
        yield tmp
        _umask_modes(tmp, target)
        if tmp.is_dir() and target.is_dir() and not keep_existing:
            shutil.rmtree(target)  # os.replace cannot replace a non-empty directory
        try:
            os.replace(tmp, target)
        except OSError:
            if not (keep_existing and target.is_dir()):
                raise
            remove(tmp)  # another process finished the same directory first: theirs is kept
    except BaseException as error:
        remove(tmp)
        if isinstance(error, FileWriteError):  # from a nested write: named where it was to end up
            raise FileWriteError(str(error).replace(str(tmp), str(target))) from None
        if isinstance(error, (OSError, SafetensorError)):
            raise FileWriteError(f"cannot write {target}: {one_line(error)}") from None
        raise


def _umask_modes(tmp: Path, target: Path) -> None:
    # safetensors >= 0.8.1 writes through a temporary created 0600 and ignores the umask
    # (safetensors/safetensors#782): a bundle or adapter saved by a model owner would be unreadable to the
    # SuperNode's user. Its files get the mode an ordinary write would have given them.
    if tmp.is_file():
        files = [tmp] if target.suffix == ".safetensors" else []
    else:
        files = [f for f in tmp.rglob("*.safetensors") if f.is_file() and not f.is_symlink()]
    if files:
        mode = 0o666 & ~_umask()
        for file in files:
            os.chmod(file, mode)


def _umask() -> int:
    current = os.umask(0o077)  # reading the umask sets it; the restrictive value for the moment between
    os.umask(current)
    return current


def remove(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_temporaries(directory: Path) -> list[Path]:
    """Remove what ``replacing`` leaves when its process is killed mid-write (``.NAME.tmp-PID-RANDOM``) from
    ``directory``; returns what was removed."""
    found = sorted(directory.glob(".*.tmp-*")) if directory.is_dir() else []
    for path in found:
        remove(path)
    return found


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_out_dir(path: Path, option: str, allowed: str) -> None:
    """Refuse, in one line and before any heavy work, an output directory that cannot be made; leave nothing
    behind (work refused later, a model that changed say, must not leave an empty directory).

    Args:
        path: the directory an option gave.
        option: the option as the user wrote it, e.g. ``"--out"``.
        allowed: what to give instead, e.g. ``"give a directory that can be written"``.

    Raises:
        ValueError: ``path`` is a file or cannot be created (``--out=x is a file; <allowed>``): the bare errno
            it used to end in (``[Errno 20] Not a directory``) named neither the option nor what would do.
    """
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option}={path} is a file; {allowed}")
    if path.is_dir():
        return
    # Whether it can be made is known only by making it (as root, os.access says yes to /proc/x): made, then
    # removed again, the deepest first.
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True)
    except OSError as error:
        raise ValueError(f"{option}={path} cannot be created ({one_line(error)}); {allowed}") from None
    for directory in made:
        directory.rmdir()


def one_line(error: BaseException) -> str:
    """An exception's message on one line (an ``OSError``'s reason without the errno prefix)."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def read_text(path: str | Path, kind: str = "text") -> str:
    """The text of a UTF-8 file, without a leading byte-order mark.

    Args:
        kind: what the file should hold, for the message (``"TOML"``).

    Raises:
        ValueError: the file is missing, unreadable or not UTF-8 (binary, say); one line that names it.
    """
    path = Path(path)
    try:
        # Editors on Windows may start a UTF-8 file with a byte-order mark, which TOML and JSON parsers refuse
        # as an invalid first character. Removed after decoding ("utf-8-sig" would shift the offsets that a
        # decoding error names by its 3 bytes).
        return path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise ValueError(
            f"{path} is not UTF-8 {kind} (byte 0x{byte:02x} at offset {error.start}: {error.reason})"
        ) from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {one_line(error)}") from None

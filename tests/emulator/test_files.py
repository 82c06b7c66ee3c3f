"""Every file a user or an earlier run provides, and every file a run writes, ends on failure in one line that
names the file and what is wrong, with nothing half-written left behind (issue 23 §4)."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors import SafetensorError

from emulator.files import (
    FileWriteError,
    read_json,
    read_jsonl,
    read_tensors,
    read_text,
    remove_temporaries,
    replacing,
    temporary_path,
    write_text,
)
from emulator.results import MCResult
from simulations.run_config import read_run_json
from simulations.server import outputs
from simulations.server.evaluation import EMULATOR_ZS, FULL_ZS
from simulations.server.outputs import RunState, load_checkpoint, save_checkpoint
from strategies.records import RoundRecord

ROW = {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.5, "acc_norm_stderr": 0.1, "n": 4}
ADAPTER = {"0.mlp.weight": np.ones((4, 3), dtype=np.float32)}
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
# What safetensors' Rust writer raises when the disk fills (the issue's 49-line traceback ended in it).
SAFETENSORS_ENOSPC = SafetensorError(
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)


def state(rounds: int) -> RunState:
    zero_shot = {FULL_ZS: MCResult.from_row(ROW), EMULATOR_ZS: MCResult.from_row(ROW)}
    history = [RoundRecord(round=r, sampled=1, replied=1, aggregated=1) for r in range(1, rounds + 1)]
    return RunState(zero_shot=zero_shot, history=history)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp" in p.name)


@pytest.mark.parametrize("error", [ENOSPC, SAFETENSORS_ENOSPC], ids=["OSError", "SafetensorError"])
def test_a_checkpoint_write_that_fills_the_disk_is_one_line_and_leaves_the_last_checkpoint(
    tmp_path, monkeypatch, error
):
    save_checkpoint(tmp_path, ADAPTER, {}, state(1))

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)  # part of the file, then the disk is full
        raise error

    monkeypatch.setattr(outputs, "save_file", disk_full)
    with pytest.raises(FileWriteError) as caught:
        save_checkpoint(tmp_path, ADAPTER, {}, state(2))
    message = str(caught.value)
    target = tmp_path / "checkpoint" / "round-0002" / "adapter.safetensors"
    assert message.startswith(f"cannot write {target}: ") and "\n" not in message
    assert "No space left on device" in message
    assert temporaries(tmp_path) == []  # the issue: an empty .round-0002.tmp-PID was left behind
    assert not (tmp_path / "checkpoint" / "round-0002").exists()
    assert (tmp_path / "checkpoint" / "latest").read_text() == "round-0001"
    monkeypatch.undo()
    assert len(load_checkpoint(tmp_path).state.history) == 1  # resumable from the last complete round


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": true}')
    with pytest.raises(FileWriteError, match=rf"^cannot write {path}: No space left on device$"):
        with replacing(path) as tmp:
            tmp.write_text('{"new"')
            raise ENOSPC
    assert read_json(path) == {"old": True}
    assert temporaries(tmp_path) == []


def test_a_truncated_json_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"status": "finished", "rounds": [1, 2, 3]}))
    truncate(path)
    with pytest.raises(ValueError) as caught:
        read_run_json(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not valid JSON (") and "\n" not in message
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'nope.json'} does not exist$"):
        read_json(tmp_path / "nope.json")


def test_a_binary_file_where_text_is_meant_is_one_line_naming_it(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xff\xfe\x00[a]")  # UTF-16, say
    with pytest.raises(ValueError) as caught:
        read_text(path, "TOML")
    assert str(caught.value) == f"{path} is not UTF-8 TOML (byte 0xff at offset 0: invalid start byte)"
    with pytest.raises(ValueError, match=rf"^{path} is not UTF-8 text \(byte 0xff"):
        read_json(path)


def test_a_results_file_whose_last_append_was_cut_short_names_the_line(tmp_path):
    path = tmp_path / "transfer.jsonl"
    path.write_text('{"spec": "method=full"}\n\n{"spec": "method=sca')  # a study killed mid-append
    with pytest.raises(ValueError, match=rf"^{path} line 3 is not valid JSON \(.*\): cut short or edited"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "adapter.safetensors"
    save_file(ADAPTER, str(path))
    truncate(path, keep=0.9)
    for framework in ("pt", "numpy"):
        with pytest.raises(ValueError) as caught:
            read_tensors(path, framework=framework)
        message = str(caught.value)
        assert message.startswith(f"{path} is not a readable safetensors file (") and "\n" not in message


def test_a_damaged_zero_shot_memo_is_named_then_scored_again(tmp_path, caplog):
    from conftest import tiny

    from emulator.data.tasks import synthetic_examples
    from emulator.evaluation.memo import memoised_accuracy

    model, tokenizer = tiny("tiny-llama")
    examples = synthetic_examples(4)
    first = memoised_accuracy(model, tokenizer, examples, directory=tmp_path)
    (memo,) = tmp_path.glob("*.json")
    truncate(memo)
    with caplog.at_level(logging.WARNING, logger="emulator.evaluation.memo"):
        again = memoised_accuracy(model, tokenizer, examples, directory=tmp_path)
    assert again == first
    assert any(
        f"ignoring the zero-shot memo {memo}: {memo} is not valid JSON" in r.message for r in caplog.records
    )
    assert read_json(memo)["acc"] == first.acc  # rewritten whole


def test_a_truncated_bundle_manifest_is_named_and_the_cache_rebuilds_it(tmp_path, monkeypatch, caplog):
    from conftest import tiny

    from emulator.config import EmulatorConfig
    from emulator.scaleot.bundle import read_manifest
    from simulations.server.bundle_cache import ensure_bundle

    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    model, tokenizer = tiny("tiny-llama")
    config = EmulatorConfig.of(method="uniform", alpha=0.5, rank_keep=1.0)
    bundle = ensure_bundle("tiny-llama", config, model, tokenizer)
    truncate(bundle / "manifest.json")
    with pytest.raises(ValueError, match=rf"^{bundle / 'manifest.json'} is not valid JSON \("):
        read_manifest(bundle)
    with caplog.at_level(logging.WARNING, logger="simulations.server.bundle_cache"):
        assert ensure_bundle("tiny-llama", config, model, tokenizer) == bundle
    assert any(
        "manifest.json is not valid JSON" in r.message and "rebuilding" in r.message for r in caplog.records
    )
    assert read_manifest(bundle)["format_version"]


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    # Two processes, or two threads of one (the in-process backend), may fill the same cache entry at once: a
    # temporary named after the process alone would be written by both.
    target = tmp_path / "entry.json"
    with replacing(target) as first, replacing(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1" and temporaries(tmp_path) == []
    left = temporary_path(target)  # what a writer killed mid-write leaves is found by its name
    left.write_text("half")
    assert remove_temporaries(tmp_path) == [left]


def test_a_directory_another_writer_finished_first_is_kept(tmp_path):
    target = tmp_path / "bundle"
    with replacing(target, keep_existing=True) as mine:
        mine.mkdir()
        (mine / "manifest.json").write_text("mine")
        target.mkdir()  # meanwhile another process renamed its complete bundle into place
        write_text(target / "manifest.json", "theirs")
    assert (target / "manifest.json").read_text() == "theirs" and temporaries(tmp_path) == []
    with replacing(target) as again:  # by default a directory is replaced
        again.mkdir()
        (again / "manifest.json").write_text("new")
    assert (target / "manifest.json").read_text() == "new"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_safetensors_files_get_the_mode_of_their_json_siblings(tmp_path):
    # safetensors writes 0600 whatever the umask (safetensors/safetensors#782): a bundle another user (the
    # SuperNode's) must read would be refused.
    from safetensors.numpy import save_file

    tensors = {"w": np.zeros(2, dtype=np.float32)}
    with replacing(tmp_path / "alone.safetensors") as tmp:
        save_file(tensors, str(tmp))
    with replacing(tmp_path / "adapter") as folder:
        (folder / "inner").mkdir(parents=True)
        save_file(tensors, str(folder / "inner" / "adapter_model.safetensors"))
    write_text(tmp_path / "config.json", "{}")
    sibling = (tmp_path / "config.json").stat().st_mode & 0o777
    old = os.umask(0o027)
    try:
        with replacing(tmp_path / "private.safetensors") as tmp:
            save_file(tensors, str(tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "alone.safetensors").stat().st_mode & 0o777 == sibling
    assert (tmp_path / "adapter" / "inner" / "adapter_model.safetensors").stat().st_mode & 0o777 == sibling
    assert (tmp_path / "private.safetensors").stat().st_mode & 0o777 == 0o640

"""State from an earlier run is reused only when the content it derives from is the same."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import write_bigbench_archive

from emulator.config import EmulatorConfig
from emulator.data.bigbench import bigbench_source, read_bigbench_task
from emulator.lm.models import load_model, model_fingerprint
from emulator.scaleot.bundle import load_emulator, read_manifest
from simulations.run_config import check_resumable, load_config
from simulations.server.bundle_cache import ensure_bundle

ROOT = Path(__file__).resolve().parents[3]
UNIFORM = EmulatorConfig.of(method="uniform", alpha=0.5, rank_keep=1.0)  # no stage 1: builds in a second


def save_checkpoint_at(path: Path, seed: int, tokenizer) -> None:
    model, _ = load_model("tiny-llama", seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def embedding_of(bundle: Path) -> torch.Tensor:
    return load_emulator(bundle)[0].model.get_input_embeddings().weight


def test_two_checkpoints_at_the_same_path_do_not_share_an_emulator(tmp_path, monkeypatch, tokenizer):
    # The input: two different checkpoints saved at the same relative path `m`, and one overwritten
    # in place (same size, modification time put back), each get the emulator of their own weights.
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path / "cache"))
    bundles, embeddings, fingerprints = [], [], []
    for where, seed in (("a", 0), ("b", 1), ("a", 2)):
        monkeypatch.chdir(tmp_path)
        (tmp_path / where).mkdir(exist_ok=True)
        monkeypatch.chdir(tmp_path / where)
        weights = Path("m") / "model.safetensors"
        before = os.stat(weights) if weights.exists() else None
        save_checkpoint_at(Path("m"), seed, tokenizer)
        if before is not None:  # the overwrite in place: nothing but the content tells it apart
            assert os.stat(weights).st_size == before.st_size
            os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
        model, tok = load_model("m")
        bundles.append(ensure_bundle("m", UNIFORM, model, tok))
        embeddings.append(model.get_input_embeddings().weight.detach().clone())
        fingerprints.append(model_fingerprint(model))
    assert len(set(bundles)) == 3 and len(set(fingerprints)) == 3
    for bundle, embedding, fingerprint in zip(bundles, embeddings, fingerprints, strict=True):
        assert torch.equal(embedding_of(bundle), embedding)  # each emulator holds its own model's weights
        assert read_manifest(bundle)["provenance"]["model"] == fingerprint

    # The same weights under another name or path share the bundle: the key is content, not the path.
    monkeypatch.chdir(tmp_path / "a")
    model, tok = load_model("m")
    assert ensure_bundle("m", UNIFORM, model, tok) == bundles[2]


def test_a_bundle_whose_manifest_disagrees_with_its_key_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    model, tok = load_model("tiny-llama")
    bundle = ensure_bundle("tiny-llama", UNIFORM, model, tok)
    manifest = json.loads((bundle / "manifest.json").read_text())
    expected = manifest["provenance"]
    assert expected["model"] == model_fingerprint(model) and "corpus" not in expected  # uniform reads none
    manifest["provenance"] = {**expected, "model": "0" * 64}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert ensure_bundle("tiny-llama", UNIFORM, model, tok) == bundle
    assert read_manifest(bundle)["provenance"] == expected


def test_the_fingerprint_follows_content_not_name():
    a, b = load_model("tiny-llama", seed=0)[0], load_model("tiny-llama", seed=1)[0]
    assert model_fingerprint(a) == model_fingerprint(load_model("tiny-llama", seed=0)[0])
    assert model_fingerprint(a) != model_fingerprint(b)
    with torch.no_grad():
        a.get_input_embeddings().weight[0, 0] += 1e-6  # one value of 3 M
    assert model_fingerprint(a) != model_fingerprint(load_model("tiny-llama", seed=0)[0])


def test_resume_under_a_config_that_changes_training_is_refused(tmp_path):
    config = load_config(ROOT / "simulations/configs/tiny.toml")
    (tmp_path / "config.json").write_text(config.to_json())
    check_resumable(tmp_path, load_config(ROOT / "simulations/configs/tiny.toml", ["federation.rounds=5"]))
    other = load_config(ROOT / "simulations/configs/tiny.toml", ["emulator.alpha=0.25"])
    with pytest.raises(ValueError, match=r"another config \(emulator.alpha: 0.5 -> 0.25\)"):
        check_resumable(tmp_path, other)
    test_set = load_config(ROOT / "simulations/configs/tiny.toml", ["evaluation.test_limit=80"])
    with pytest.raises(ValueError, match=r"evaluation.test_limit: 40 -> 80"):
        check_resumable(tmp_path, test_set)  # the checkpoint's zero-shot rows were scored on 40 examples
    with pytest.raises(ValueError, match="not a run directory"):
        check_resumable(tmp_path / "missing", config)


def test_a_task_extracted_from_another_archive_is_extracted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    write_bigbench_archive({"tiny_task": {"version": 1}})
    assert read_bigbench_task("tiny_task") == {"version": 1}
    assert read_bigbench_task("tiny_task") == {"version": 1}  # from the extracted copy
    write_bigbench_archive({"tiny_task": {"version": 2}})  # another download, a second later
    stat = bigbench_source().stat()
    os.utime(bigbench_source(), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert read_bigbench_task("tiny_task") == {"version": 2}
    (tmp_path / "bigbench" / "tasks" / "tiny_task" / "source.json").unlink()  # a copy of unknown origin
    write_bigbench_archive({"tiny_task": {"version": 3}})
    assert read_bigbench_task("tiny_task") == {"version": 3}


@pytest.mark.system  # dequantises SmolLM2's GGUF into a fresh cache: a minute on 2 cores
def test_a_dequantised_copy_of_unknown_origin_is_dequantised_again(tmp_path, monkeypatch, tokenizer):
    # A copy without the GGUF's hash (here: another model's weights put in its place) is never loaded as
    # SmolLM2; it is dequantised again from the GGUF, and the stamp written.
    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))
    directory = tmp_path / "models" / "smollm2-135m"
    save_checkpoint_at(directory, 0, tokenizer)
    model, _ = load_model("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and (directory / "source.json").is_file()


def test_cache_key_ignores_unused_sections_and_follows_used_ones(tmp_path, monkeypatch):
    # The bundle directory is keyed on the sections the method reads: a stage-1 or distillation knob does
    # not rebuild a LayerDrop emulator; its alpha or SRC (once on) does.
    from simulations.server.bundle_cache import bundle_dir, provenance

    monkeypatch.setenv("SCALEOT_CACHE", str(tmp_path))

    def key(config: EmulatorConfig) -> Path:
        return bundle_dir("tiny-llama", provenance("0" * 64, config))

    assert key(UNIFORM.updated(stage1_steps=3, distill_lr=1e-3, seq_len=16, log_every=1)) == key(UNIFORM)
    assert key(UNIFORM.updated(src_rank="fraction")) == key(UNIFORM)  # SRC is off (rank_keep 1)
    assert key(UNIFORM.updated(alpha=0.25)) != key(UNIFORM)
    assert key(UNIFORM.updated(rank_keep=0.5)) != key(UNIFORM.updated(rank_keep=0.5, src_rank="fraction"))

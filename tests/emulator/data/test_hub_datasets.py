"""Hub tasks load with the installed ``datasets`` through the real ``datasets.load_dataset`` call.

Each hub repository is rebuilt in ``tmp_path`` in its own format: parquet files at the repository's paths, in
its column schema, with the ``configs:`` block of its README where it has named configs. ``load_task`` then
calls the real ``datasets.load_dataset(path, config)`` with the path mapped to that local copy, so a script
repository, a config name ``datasets`` cannot resolve or a split the task does not find fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest

from emulator.data.paper_tasks import PAPER_TASKS, SOURCE_ENV
from emulator.data.tasks import load_task

_SPLITS = ("train", "validation", "test")


def _row(path: str, tag: str, i: int) -> dict[str, Any]:
    """One row in the repository's column schema; ``tag`` (config/split) and ``i`` make it unique."""
    text = f"{tag} {i}"
    if path == "baber/piqa":
        return {"goal": f"goal {text}", "sol1": f"one {text}", "sol2": f"two {text}", "label": i % 2}
    if path == "Rowan/hellaswag":
        return {
            "ind": i, "activity_label": f"activity {text}", "ctx_a": f"ctx {text}.", "ctx_b": "then",
            "ctx": f"ctx {text}. then", "endings": [f"ending {k}" for k in range(4)], "source_id": "x",
            "split": tag, "split_type": "indomain", "label": str(i % 4),
        }  # fmt: skip
    if path == "allenai/sciq":
        return {
            "question": f"question {text}", "distractor3": "d3", "distractor1": "d1", "distractor2": "d2",
            "correct_answer": f"answer {text}", "support": f"support {text}",
        }  # fmt: skip
    labels = ["A", "B", "C", "D"] if path == "allenai/ai2_arc" else ["1", "2", "3", "4"]
    row = {
        "id": text,
        "question" if path == "allenai/ai2_arc" else "question_stem": f"question {text}",
        "choices": {"text": [f"choice {k} {text}" for k in labels], "label": labels},
        "answerKey": labels[i % 4],
    }
    if tag.startswith("additional"):
        row["fact1"] = "a fact"  # openbookqa's second config has more columns
    return row


# The repositories' configs as on the hub (None: one default config, files under data/).
_CONFIGS: dict[str, tuple[str, ...] | None] = {
    "baber/piqa": None,
    "Rowan/hellaswag": None,
    "allenai/sciq": None,
    "allenai/ai2_arc": ("ARC-Challenge", "ARC-Easy"),
    "allenai/openbookqa": ("additional", "main"),
}
_SIZES = {"train": 40, "validation": 6, "test": 9}


def _local_repo(root: Path, path: str) -> Path:
    """A local copy of hub repository ``path`` in its own layout, under ``root``."""
    repo = root / path
    configs = _CONFIGS[path]
    yaml = ["---", "configs:"]
    for config in configs or (None,):
        folder = config or "data"
        for split in _SPLITS:
            rows = [_row(path, f"{config}/{split}", i) for i in range(_SIZES[split])]
            target = repo / folder / f"{split}-00000-of-00001.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_parquet(str(target))
        if config is not None:
            yaml += [f"- config_name: {config}", "  data_files:"]
            yaml += [f"  - split: {split}\n    path: {config}/{split}-*" for split in _SPLITS]
    if configs is not None:
        (repo / "README.md").write_text("\n".join([*yaml, "---", ""]))
    return repo


@pytest.fixture(autouse=True)
def hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOURCE_ENV, "hub")


@pytest.mark.parametrize("task", sorted(PAPER_TASKS))
def test_hub_task_loads_from_a_local_copy_in_the_hub_format(task, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    spec = PAPER_TASKS[task]
    assert spec.hub_path in _CONFIGS, f"{spec.hub_path} has no local copy in this test; add its layout"
    repo = _local_repo(tmp_path / "hub", spec.hub_path)
    calls = []

    def load(path: str, config: str | None):
        calls.append((path, config))
        return datasets.load_dataset(str(repo), config)  # the real call, with the path made local

    splits = load_task(task, load_dataset_fn=load)

    assert calls == [(spec.hub_path, spec.hub_config)]
    if spec.derive_from:  # SciQ: every split derived from validation, as offline
        assert all(f"{spec.hub_config}/{spec.derive_from}" in e.context for e in splits.train + splits.test)
        assert (len(splits.test), len(splits.validation), len(splits.train)) == (3, 0, 3)
        return
    tag = f"{spec.hub_config}/{spec.test_split}"
    assert len(splits.test) == _SIZES[spec.test_split]
    assert all(tag in example.context for example in splits.test)  # the right config and split
    if spec.validation_split is None:  # 5 % of train, taken out of it
        assert (len(splits.validation), len(splits.train)) == (2, 38)
    else:
        assert len(splits.validation) == _SIZES[spec.validation_split] and len(splits.train) == 40
        assert all(f"{spec.hub_config}/validation" in e.context for e in splits.validation)
    assert all(f"{spec.hub_config}/train" in e.context for e in splits.train)
    first = splits.test[0]
    assert 0 <= first.label < len(first.choices) and all(c.startswith(" ") for c in first.choices)


def test_a_loading_script_repository_is_refused_with_one_line(tmp_path, monkeypatch):
    # Why the registry names parquet repositories: datasets 4 no longer runs scripts (the old `piqa`).
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    script_repo = tmp_path / "piqa"
    script_repo.mkdir()
    (script_repo / "piqa.py").write_text("import datasets\n")

    def load(path: str, config: str | None):
        return datasets.load_dataset(str(script_repo), config)

    with pytest.raises(ValueError, match=r"task='piqa' needs the hub dataset baber/piqa \(Dataset scripts"):
        load_task("piqa", load_dataset_fn=load)

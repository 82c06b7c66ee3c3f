"""What ``scaleot compare`` writes: comparison.json, comparison.md and comparison.png.

One row per method, read back from each run's metrics.json and emulator bundle manifest:
- accuracies (± standard error) of Offsite-Tuning's Table 1 rows: full zero-shot, emulator zero-shot,
  emulator fine-tuned (emulator + adapter) and plug-in (full model + adapter);
- the privacy gap Δ = plug-in − emulator fine-tuned (Offsite-Tuning's privacy measure; larger: more
  private);
- plug-in's paired difference to ``full`` on the same test examples (``paired_difference``: the examples'
  shared difficulty cancels, so the error is much smaller than either accuracy's);
- the client's cost: seconds per training step and peak memory (``emulator.tuning.memory``: CUDA tensor
  memory, or the client process's resident set on CPU, runtime included), averaged over clients (weighted by
  examples, as FedAvg aggregates metrics) and rounds; adapter bytes per client per round (down + up); the
  emulator's parameters (and share of the full model's), bundle size and build time.
The ``zero-shot`` row is the full model untouched: its plug-in is the full model's zero-shot accuracy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.files import read_json
from emulator.methods import METHODS
from emulator.results import (
    EMULATOR_FT,
    EMULATOR_ZS,
    FULL_ZS,
    ONE_ANSWER_SHARE,
    PLUG_IN,
    ROWS,
    paired_difference,
    privacy_gap,
)
from emulator.scaleot.bundle import read_manifest
from simulations.server.outputs import new_figure, pct, save_figure, write_text
from simulations.studies.methods import is_reference, is_upper_bound, pairs_with_reference
from strategies import wire

if TYPE_CHECKING:
    from simulations.run_config import RunConfig
    from simulations.studies.methods import Method

log = logging.getLogger(__name__)

STEAL_FILE = "steal.json"  # written by simulations.studies.steal_study into a compare directory

_ACCURACY_KEYS = (
    "acc",
    "acc_stderr",
    "acc_norm",
    "acc_norm_stderr",
    "n",
    "top_choice",
    "top_choice_share",
    "one_answer",
)
_COLUMNS = (
    "| method | params (× full) | full ZS | emulator ZS | emulator FT | plug-in | Δ "
    "| plug-in − full (paired) | plug-in − uniform, same α (paired) "
    "| step s | peak MB | KB / client / round | build s |"
)


def accuracy(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The accuracy fields of a metrics.json results row (None stays None)."""
    return None if row is None else {k: row[k] for k in _ACCURACY_KEYS if k in row}


def method_row(
    label: str, kind: str, metrics: Mapping[str, Any], reference: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One method's comparison row from its metrics.json; ``reference`` is ``full``'s Plug-in results row."""
    results = metrics["results"]
    plug_in, emulator_ft = results.get(PLUG_IN), results.get(EMULATOR_FT)
    return {
        "method": label,
        "kind": kind,
        "alpha": metrics["config"]["emulator"]["alpha"],
        "rank_keep": metrics["config"]["emulator"]["rank_keep"],
        **_bundle_facts(metrics.get("bundle", {}).get("path")),
        **{row: accuracy(results.get(row)) for row in ROWS},
        "privacy_gap": privacy_gap(plug_in, emulator_ft),
        "vs_full": _paired(plug_in, reference),
        "step_seconds": _client_mean(metrics, wire.STEP_SECONDS),
        "peak_memory_mb": _scaled(_client_mean(metrics, wire.PEAK_MEMORY), 1e-6),
        **_traffic(metrics["rounds"]),
        "rounds": metrics.get("rounds_done"),
    }


def zero_shot_row(full_metrics: Mapping[str, Any], reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """The untouched full model: its zero-shot accuracy is what a model owner deploys without tuning."""
    full_zs = full_metrics["results"][FULL_ZS]
    return {
        "method": "zero-shot",
        "kind": "zero-shot",
        "alpha": None,
        "rank_keep": None,
        **_bundle_facts(full_metrics.get("bundle", {}).get("path")),  # the full bundle: the full model's size
        "emulator_bytes": None,
        "build_seconds": 0.0,
        FULL_ZS: accuracy(full_zs),
        EMULATOR_ZS: None,
        EMULATOR_FT: None,
        PLUG_IN: accuracy(full_zs),
        "privacy_gap": None,
        "vs_full": _paired(full_zs, reference),
        "step_seconds": None,
        "peak_memory_mb": None,
        "bytes_down": 0,
        "bytes_up": 0,
        "rounds": 0,
    }


def comparison_rows(
    methods: Sequence[Method], labels: Sequence[str], results: Mapping, against: str = ""
) -> list[dict]:
    """Rows in method order, ``zero-shot`` first; methods without results (failed runs) are left out.

    Every emulator row other than uniform's also carries ``vs_uniform``: its plug-in minus the plug-in of
    uniform LayerDrop at the same α, paired (the paper's claim is that ScaleOT beats it at equal compression).
    With ``against`` (a method label), every other method's row carries ``vs_against``: its plug-in minus that
    method's, paired (None while that method has not finished).
    """
    full = next((results[m] for m in methods if is_upper_bound(m.kind) and m in results), None)
    reference = full["results"].get(PLUG_IN) if full else None
    uniform = {
        results[m]["config"]["emulator"]["alpha"]: results[m]["results"].get(PLUG_IN)
        for m in methods
        if is_reference(m.kind) and m in results
    }
    finished = {label: results[m] for m, label in zip(methods, labels, strict=True) if m in results}
    chosen = finished[against]["results"].get(PLUG_IN) if against in finished else None
    rows = [zero_shot_row(full, reference)] if full else []
    for method, label in zip(methods, labels, strict=True):
        if method in results:
            row = method_row(label, method.kind, results[method], reference)
            plug_in = results[method]["results"].get(PLUG_IN)
            if pairs_with_reference(method.kind):
                row["vs_uniform"] = _paired(plug_in, uniform.get(row["alpha"]))
            if against and label != against:
                row["vs_against"] = _paired(plug_in, chosen)
            rows.append(row)
    return rows


def write_comparison(
    out: Path,
    base: RunConfig,
    methods: Sequence[Method],
    results: Mapping[Method, Mapping[str, Any]],
    failed: Mapping[str, str] | None = None,
    against: str = "",
) -> list[dict[str, Any]]:
    """Write comparison.json, comparison.md and comparison.png into ``out``; return the rows.

    ``failed`` (method label -> reason) lists the methods whose run failed: they get no row, only a line
    saying so, in comparison.md and under ``failed`` in comparison.json. ``against`` (a method label) adds
    the column of every plug-in minus that method's, paired.
    """
    failed = dict(failed or {})
    labels = [m.label(base.emulator) for m in methods]
    rows = comparison_rows(methods, labels, results, against)
    stolen = stolen_accuracies(out)  # the model-stealing study's column, when it ran
    for row in rows:
        if row["method"] in stolen:
            row["stolen_zs"] = accuracy(stolen[row["method"]])
    runs = {m.label(base.emulator): m.slug(base.emulator) for m in methods if m in results}
    data = {"base_config": json.loads(base.to_json()), "runs": runs, "rows": rows, "failed": failed}
    write_text(out / "comparison.json", json.dumps(data, indent=1))
    write_text(out / "comparison.md", markdown(rows, base, failed, against))
    if rows:
        plot_comparison(rows, out / "comparison.png")
        if any(r.get("stolen_zs") for r in rows):  # the frontier on the probe's axis (issue 21 §5)
            plot_comparison(rows, out / "comparison-stolen.png", privacy="stolen_zs")
    log.info("comparison of %d methods written to %s", len(rows), out)
    return rows


def markdown(
    rows: Sequence[Mapping[str, Any]],
    base: RunConfig,
    failed: Mapping[str, str] | None = None,
    against: str = "",
) -> str:
    """comparison.md: the setting, one table row per method (accuracies in %), the methods that failed
    (no row: nothing of theirs may be read as a result), how to read it, the plot; with ``against``, one
    more column: plug-in minus that method's, paired."""
    fed, client = base.federation, base.client
    n = next((r[PLUG_IN]["n"] for r in rows if r.get(PLUG_IN)), 0)
    steps = f"{client.local_steps} steps" if client.local_steps else f"{client.local_epochs:g} epochs"
    lines = [
        f"# {base.model} on {base.task}: ScaleOT and baselines",
        "",
        f"{fed.num_clients} clients ({fed.partition}), {fed.fraction:.0%} of them sampled per round, "
        f"{fed.rounds} rounds of {steps} at batch {client.batch_size}, lr {client.lr:g}, "
        f"{base.adapter.mode} adapter "
        f"({base.emulator.adapter_bottom} + {base.emulator.adapter_top} blocks), seed {base.seed}; "
        f"{n} test examples.",
        "",
    ]
    # The model-stealing probe's column (simulations.studies.steal_study) only when the study has run.
    stolen = any("stolen_zs" in r for r in rows)
    columns = _COLUMNS + (f" plug-in − {against} (paired) |" if against else "")
    columns += " stolen ZS (probe) |" if stolen else ""
    lines += [columns, "|" + "---|" * (columns.count("|") - 1)]
    lines += [
        _table_line(r)
        + (f" {_difference(r.get('vs_against'))} |" if against else "")
        + (f" {_stolen(r)} |" if stolen else "")
        for r in rows
    ]
    if failed:
        lines += ["", *(f"**{label}: FAILED**, no results: {why}" for label, why in failed.items())]
    lines += [
        "",
        "Accuracy in % ± standard error. Δ = plug-in − emulator fine-tuned (larger: the emulator gives away "
        "less of the model). *Paired*: plug-in minus full fine-tuning on the same test examples (mean ± "
        "standard error of the per-example difference); the same against uniform LayerDrop at the same α. "
        f"⚠: one choice position takes more than {ONE_ANSWER_SHARE:.0%} of the predictions (one answer to "
        "everything, e.g. after a split that gives each client one answer position; see metrics.json's "
        "choice_spread). "
        "Step time and peak memory are the clients' own "
        "(CUDA: tensor memory; CPU: the client process's resident set, runtime included), averaged over "
        "clients and rounds; KB are adapter bytes per client per round, down + up."
        + (
            " Stolen ZS: the emulator after the model-stealing probe (steal.md), zero-shot." if stolen else ""
        ),
        "",
    ]
    if rows:  # write_comparison plots only then: no link to a picture that is not there
        lines += ["![plug-in against emulator fine-tuned accuracy](comparison.png)", ""]
    if stolen:
        lines += ["![plug-in against the stolen emulator's zero-shot](comparison-stolen.png)", ""]
    return "\n".join(lines)


_PRIVACY_AXES = {
    EMULATOR_FT: "emulator fine-tuned accuracy (%): what the data owners hold",
    "stolen_zs": "stolen emulator zero-shot (%): what the model-stealing probe recovers",
}


def plot_comparison(rows: Sequence[Mapping[str, Any]], path: Path, privacy: str = EMULATOR_FT) -> Path:
    """The privacy-utility picture: plug-in (y) against a privacy measure (x; ``EMULATOR_FT`` or
    ``"stolen_zs"``, lower is more private) of each emulator, one point per emulator; the diagonal (plug-in
    equal to it) and full fine-tuning / zero-shot as horizontal lines."""
    fig, ax = new_figure((6.5, 5))
    emulators = [kind for kind in METHODS if not is_upper_bound(kind)]  # a colour per kind, in registry order
    colors = {kind: f"C{i}" for i, kind in enumerate(emulators)}
    points = [r for r in rows if r["kind"] in colors and r[PLUG_IN] and r.get(privacy)]
    for kind, color in colors.items():
        mine = [r for r in points if r["kind"] == kind]
        if mine:
            ax.errorbar(
                [100 * r[privacy]["acc"] for r in mine],
                [100 * r[PLUG_IN]["acc"] for r in mine],
                xerr=[100 * r[privacy]["acc_stderr"] for r in mine],
                yerr=[100 * r[PLUG_IN]["acc_stderr"] for r in mine],
                fmt="o",
                capsize=3,
                color=color,
                label=kind,
            )
    for r in points:
        xy = (100 * r[privacy]["acc"], 100 * r[PLUG_IN]["acc"])
        label = ax.annotate(r["method"], xy, textcoords="offset points", xytext=(5, 5), fontsize=7)
        label.set_in_layout(False)  # a long setting label made tight_layout squeeze the axes to a sliver
    full = next((r for r in rows if is_upper_bound(r["kind"]) and r[PLUG_IN]), None)
    zero_shot = next((r for r in rows if r["kind"] == "zero-shot" and r[PLUG_IN]), None)
    for row, style, name in ((full, "-", "full fine-tune"), (zero_shot, ":", "zero-shot")):
        if row is not None:
            ax.axhline(100 * row[PLUG_IN]["acc"], linestyle=style, color="k", alpha=0.6, label=name)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    span = [min(x0, y0), max(x1, y1)]
    ax.plot(
        span,
        span,
        "--",
        color="grey",
        linewidth=1,
        label="plug-in = emulator FT (Δ = 0)" if privacy == EMULATOR_FT else "plug-in = stolen zero-shot",
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel(_PRIVACY_AXES[privacy])
    ax.set_ylabel("plug-in accuracy (%): what the model owner gets")
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def _table_line(r: Mapping[str, Any]) -> str:
    def acc(row: Mapping[str, Any] | None) -> str:
        if not row:
            return "–"
        return pct(row["acc"], row["acc_stderr"]) + (" ⚠" if row.get("one_answer") else "")

    ratio = r.get("param_ratio")
    cells = [
        r["method"],
        "–" if r.get("emulator_params") is None else f"{r['emulator_params'] / 1e6:.1f}M ({ratio:.2f})",
        acc(r[FULL_ZS]),
        acc(r[EMULATOR_ZS]),
        acc(r[EMULATOR_FT]),
        acc(r[PLUG_IN]),
        _number(r["privacy_gap"], 100, "+.1f"),
        _difference(r.get("vs_full")),
        _difference(r.get("vs_uniform")),
        _number(r["step_seconds"], 1, ".2f"),
        _number(r["peak_memory_mb"], 1, ".0f"),
        _number((r["bytes_down"] or 0) + (r["bytes_up"] or 0), 1e-3, ".1f"),
        _number(r["build_seconds"], 1, ".0f"),
    ]
    return "| " + " | ".join(cells) + " |"


def _stolen(r: Mapping[str, Any]) -> str:
    row = r.get("stolen_zs")
    return pct(row["acc"], row["acc_stderr"]) if row else "–"


def _difference(paired: Mapping[str, float] | None) -> str:
    """A paired difference (fractions) as ``+1.4 ± 1.1`` points."""
    return "–" if paired is None else f"{100 * paired['mean']:+.1f} ± {100 * paired['stderr']:.1f}"


def _number(value: float | None, scale: float, spec: str) -> str:
    return "–" if value is None else format(value * scale, spec)


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else value * scale


def _paired(row: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> dict[str, float] | None:
    if not row or not reference or "correct" not in row or "correct" not in reference:
        return None
    mean, stderr = paired_difference(tuple(row["correct"]), tuple(reference["correct"]))
    return {"mean": mean, "stderr": stderr}


def _client_mean(metrics: Mapping[str, Any], key: str) -> float | None:
    values = [r["client_metrics"][key] for r in metrics["rounds"] if key in r.get("client_metrics", {})]
    return sum(values) / len(values) if values else None


def _traffic(rounds: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Mean adapter bytes per client per round: server to client (down) and back (up)."""
    if not rounds:
        return {"bytes_down": None, "bytes_up": None}
    down = sum(r["bytes_per_client"] for r in rounds) / len(rounds)
    up = sum(r["bytes_received"] / max(r["aggregated"], 1) for r in rounds) / len(rounds)
    return {"bytes_down": down, "bytes_up": up}


def _bundle_facts(path: str | None) -> dict[str, Any]:
    """Parameter counts, tensor-file size and build time from the emulator bundle's manifest (if present)."""
    facts: dict[str, Any] = dict.fromkeys(
        ("emulator_params", "full_params", "param_ratio", "emulator_bytes", "build_seconds")
    )
    if not path or not (Path(path) / "manifest.json").is_file():
        return facts
    manifest = read_manifest(path)
    facts.update(
        emulator_params=manifest["num_parameters"],
        full_params=manifest["full_num_parameters"],
        param_ratio=manifest["num_parameters"] / manifest["full_num_parameters"],
        emulator_bytes=(Path(path) / manifest["tensor_file"]).stat().st_size,
        build_seconds=manifest["build_seconds"],
    )
    return facts


def stolen_accuracies(out: Path) -> dict[str, dict[str, float]]:
    """Method label -> its stolen zero-shot measures (``MCResult.measures``) from ``out/steal.json``; {} if
    the study has not run."""
    path = out / STEAL_FILE
    if not path.is_file():
        return {}
    return {r["method"]: r["stolen_zs"] for r in stolen_rows(read_json(path))}


def stolen_rows(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of a ``steal.json``, with measures as ``MCResult.measures`` dicts."""

    # steal.json rows written before the results rows had one serialiser held [acc, stderr] pairs.
    def measures(value: Any) -> Any:
        return dict(zip(("acc", "acc_stderr"), value, strict=True)) if isinstance(value, list) else value

    return [{k: measures(v) if k.endswith("_zs") else v for k, v in r.items()} for r in data["rows"]]

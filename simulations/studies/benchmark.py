"""Client efficiency benchmark (a script, not a test): what a data owner pays per step; what federation costs.

In one run, on one model at one batch size and sequence length (``--sections`` picks which parts run):

0. **gemm**: the machine's fp32 matmul throughput on the model's own matrix shapes
   (``simulations.studies.throughput``); every phase below is also shown as its needed FLOPs per second, as a
   fraction of it.
1. **clients: training step time and peak memory of a client** on the ScaleOT emulator, on the uniform
   (LayerDrop) emulator and on the full model, each on the new code path, with the optimisations off
   (``old``: the LM head on every position, ``train_adapter(trim_logits=False)``) and with activation
   checkpointing of the frozen blocks (``ckpt``), side by side in one run so that ratios are free of the
   machine's drift. Each is measured in a fresh child process that holds only that model, as
   a client does: it loads the model (emulator bundle or full model), makes the adapter blocks trainable and
   runs ``emulator.tuning.training.train_adapter`` on fixed-length batches of random tokens whose last
   positions carry the labels, as many as the task's answers have (the context carries no loss),
   ``--warmup`` steps first, then ``--steps`` timed ones. Step time is the median over the timed steps, the
   fastest of ``--repeats`` passes over all the children (bursts of other work only slow steps down);
   memory is ``emulator.tuning.memory.PeakMemory`` (CUDA: peak tensor memory; CPU: the process's peak resident
   set, Python and torch included, shown with the part above the loaded model).
2. **The FLOP bound of each client model relative to the full model.** Training FLOPs per token are counted
   from the parameters a token goes through, as ``4·P + 2·P_adapter``: ``2·P`` for the forward pass, ``2·P``
   for the gradients with respect to activations (they flow from the loss down to the bottom adapter block,
   through everything), ``2·P_adapter`` for the gradients of the trainable adapter weights. ``P`` counts
   every matrix a token is multiplied by: decoder blocks (harmonizers and low-rank factors as stored), and
   the LM head (also when it is tied to the embeddings); the input embedding is a table lookup and does not
   count. Attention scores (∝ sequence length), norms and activations are left out. ``bound`` = FLOPs of the
   model / FLOPs of the full model: the time ratio a client could reach if time followed FLOPs; the target
   is a measured time ratio within 1.1 × the bound.
2b. **scoring**: examples per second of zero-shot scoring of the full model on the first
   ``--scoring-examples`` test examples of the task, new path against ``old`` (logits on every position,
   the former shared-context packing: ``choice_logliks(trim_logits=False, bucketed=False)``).
3. **builds: emulator build time**: ScaleOT (stage 1, Dynamic LayerReplace, then assembly and SRC) against
   uniform+distill, with the same number of steps (``--build-steps``), and plain uniform (no training).
4. **overhead: the framework's overhead per round** (needs flwr and Ray): a short simulation on Flower's
   Ray runtime (uniform emulator, 2 clients, IID); per round, wall time minus server-side evaluation minus
   the clients' own training time (clients run one after the other on one actor). Round 1 also holds the
   emulator handshake (actor start, bundle load).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.benchmark  # SmolLM2-135M, ~30 min
    .venv/bin/python -m simulations.studies.benchmark --sections gemm clients scoring  # no flwr or Ray needed
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m simulations.studies.benchmark --quick  # tiny-llama, ~2 min
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulator.methods import METHODS
from simulations.arguments import (
    EXIT_USAGE,
    error_line,
    non_negative_int,
    output_file,
    positive_int,
    unloadable_model,
)

if TYPE_CHECKING:
    from torch import nn

    from emulator.config import EmulatorConfig

log = logging.getLogger("scaleot.benchmark")

TASKS = {"smollm2-135m": "arc_easy"}  # the simulation's task; else synthetic
SECTIONS = ("gemm", "clients", "scoring", "builds", "overhead")
# Client code paths: the optimisations off, on, and on with activation checkpointing of the frozen blocks.
VARIANTS = {"old": {"trim_logits": False}, "new": {}, "ckpt": {"checkpoint_blocks": True}}


# The sizes of a measurement and of ``--quick``'s check that it runs; an option given explicitly wins.
SIZES = {
    "model": "smollm2-135m",
    "batch_size": 8,
    "seq_len": 256,
    "steps": 10,
    "warmup": 2,
    "repeats": 2,
    "build_steps": 60,
    "scoring_examples": 64,
}
QUICK_SIZES = {
    "model": "tiny-llama",
    "batch_size": 4,
    "seq_len": 64,
    "steps": 4,
    "warmup": 1,
    "repeats": 1,
    "build_steps": 4,
    "scoring_examples": 16,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def sized(flag: str, type: Any, help: str) -> None:
        # default None: an option left out takes SIZES or, with --quick, QUICK_SIZES; one given is kept
        # (--quick used to overwrite it without a word).
        key = flag.removeprefix("--").replace("-", "_")
        default = f"(default: {SIZES[key]}; with --quick: {QUICK_SIZES[key]})"
        parser.add_argument(flag, type=type, default=None, help=f"{help} {default}".strip())

    sized("--model", str, "")
    parser.add_argument("--alpha", type=float, default=0.25, help="α of the ScaleOT and uniform emulators")
    parser.add_argument("--rank-keep", type=float, default=1.0, help="β of the ScaleOT emulator (1: SRC off)")
    sized("--batch-size", positive_int, "")
    sized("--seq-len", positive_int, "tokens per training sequence")
    sized("--steps", positive_int, "timed training steps per client model")
    sized("--warmup", non_negative_int, "untimed training steps first")
    sized("--repeats", positive_int, "passes over the client measurements; the fastest is kept")
    sized("--build-steps", non_negative_int, "stage-1 = distillation steps")
    parser.add_argument(
        "--baselines",
        nargs="*",
        choices=[kind for kind, traits in METHODS.items() if traits.compresses and traits.role != "proposed"],
        default=[],
        help="without the builds section: also measure a client step on these emulators at --alpha (e.g. "
        "crash, whose shared blocks make the client run every layer)",
    )
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run")
    sized("--scoring-examples", positive_int, "test examples scored per path")
    parser.add_argument("--variant", choices=VARIANTS, default="new", help=argparse.SUPPRESS)  # child only
    parser.add_argument(
        "--quick", action="store_true", help="tiny-llama, tiny sizes (where not given): checks that it runs"
    )
    parser.add_argument("--json", type=output_file, help="also write the measurements to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one client model, print JSON
    args = parser.parse_args(argv)
    for key, value in (QUICK_SIZES if args.quick else SIZES).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def check_args(args: argparse.Namespace) -> None:
    """Refuse what would fail only after models loaded and earlier sections ran: the model name and the
    emulators' settings (``--alpha``, ``--rank-keep``, ``--build-steps``).

    Raises:
        ValueError: one line naming the option or config field, the value and what is allowed.
    """
    from emulator.lm.models import check_model_name

    check_model_name(args.model)
    for kind in ("scaleot", *args.baselines):
        emulator_config(args, kind)
    build_configs(args)


def machine(device: str) -> str:
    """CPU model, cores, torch version and device, in one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if "model name" in ln]
        cpu = names[0] if names else cpu
    gpu = f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, device {device}{gpu}"


def flops_per_token(model: nn.Module) -> float:
    """Training FLOPs per token, ``4·P + 2·P_adapter`` (module docstring); call after ``prepare_adapter_``."""
    params = sum(p.numel() for p in model.parameters())
    matrices = (
        params - model.get_input_embeddings().weight.numel() + model.get_output_embeddings().weight.numel()
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4.0 * matrices + 2.0 * trainable


def random_batches(
    vocab: int, batch_size: int, seq_len: int, count: int, answers: Sequence[int]
) -> list[dict[str, Any]]:
    """``count`` fixed-length batches of random tokens; the same for every model.

    Row ``r`` carries labels on its last ``answers[r % len(answers)]`` positions only (the task's answer
    lengths in tokens), as a task example's context carries no loss.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    batches, row = [], 0
    for _ in range(count):
        ids = torch.randint(vocab, (batch_size, seq_len), generator=generator)  # (B, T)
        labels = torch.full_like(ids, -100)
        for b in range(batch_size):
            answer = min(answers[row % len(answers)], seq_len - 1)
            labels[b, -answer:] = ids[b, -answer:]
            row += 1
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def answer_lengths(tokenizer: Any, model_name: str, seq_len: int, count: int = 256) -> list[int]:
    """Token counts of the correct answers of the first ``count`` training examples of the model's task."""
    from emulator.data.encoding import IGNORE_INDEX, encode_example
    from emulator.data.tasks import load_task

    examples = load_task(TASKS.get(model_name, "synthetic")).train[:count]
    encoded = [encode_example(tokenizer, ex.context, ex.choices[ex.label], seq_len) for ex in examples]
    return [len(labels) - labels.count(IGNORE_INDEX) for _, labels in encoded]


def _stamped(batches: Sequence[Mapping[str, Any]], stamps: list[float]) -> Iterator[Mapping[str, Any]]:
    # The time between two requests for a batch is one whole training step (forward, backward, update).
    for batch in batches:
        stamps.append(time.perf_counter())
        yield batch
    stamps.append(time.perf_counter())


# --- 1 and 2: a client's step, in a child process --------------------------------------------------------


def measure_client(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """In this (child) process: load ``spec`` (``full`` or a bundle directory), train, measure."""
    import torch

    from emulator.config import AdapterConfig, EmulatorConfig
    from emulator.lm.architectures import num_layers
    from emulator.lm.models import load_model
    from emulator.scaleot.blocks import adapter_layers
    from emulator.scaleot.bundle import load_emulator
    from emulator.tuning.adapters import prepare_adapter_
    from emulator.tuning.memory import current_rss
    from emulator.tuning.training import train_adapter
    from simulations.studies.throughput import training_flops

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "full":
        model, tokenizer = load_model(args.model, device=device)
        sandwich = EmulatorConfig()  # the emulators' default 2 + 2 adapter blocks
        positions = {
            i: i for i in adapter_layers(num_layers(model), sandwich.adapter_bottom, sandwich.adapter_top)
        }
    else:
        emulator, tokenizer = load_emulator(spec, device=device)
        model, positions = emulator.model, emulator.adapter_positions()
    prepare_adapter_(model, positions, AdapterConfig())
    loaded = torch.cuda.memory_allocated() if device == "cuda" else current_rss()
    answers = answer_lengths(tokenizer, args.model, args.seq_len)
    count = args.warmup + args.steps
    batches = random_batches(model.config.vocab_size, args.batch_size, args.seq_len, count, answers)
    options = VARIANTS[args.variant]
    if args.warmup:
        train_adapter(model, positions, batches[: args.warmup], lr=1e-4, **options)
    stamps: list[float] = []
    result = train_adapter(model, positions, _stamped(batches[args.warmup :], stamps), lr=1e-4, **options)
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    scored = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches) / len(batches)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops_per_token": flops_per_token(model),
        "needed_flops": training_flops(model, args.batch_size * args.seq_len, round(scored)),
        "step_seconds": statistics.median(steps),
        "peak_bytes": result.peak_memory,
        "loaded_bytes": loaded,
    }


def client_in_child(spec: str, args: argparse.Namespace, variant: str = "new") -> dict[str, Any]:
    """``measure_client`` in a fresh Python process, so its memory is that one model's alone."""
    argv = [sys.executable, "-m", "simulations.studies.benchmark", "--child", spec, "--model", args.model]
    argv += ["--variant", variant]
    argv += ["--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len)]
    argv += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_clients(jobs: Mapping[str, tuple[str, str]], args: argparse.Namespace) -> dict[str, dict]:
    """Each (model, code path) of ``jobs`` measured ``--repeats`` times, the passes one after the other.

    A burst of other work on the machine only ever slows a step down, so the fastest pass of each is kept (and
    the largest peak): a burst during one child no longer skews a ratio, which a single pass did (a
    checkpointed step measured 2.3 × in one run, 1.3 × when measured again).
    """
    clients: dict[str, dict[str, Any]] = {}
    for repeat in range(args.repeats):
        for label, (spec, variant) in jobs.items():
            log.info("measuring a client step on %s (pass %d of %d)", label, repeat + 1, args.repeats)
            result = client_in_child(spec, args, variant)
            best = clients.setdefault(label, result)
            best["step_seconds"] = min(best["step_seconds"], result["step_seconds"])
            best["peak_bytes"] = max(best["peak_bytes"], result["peak_bytes"])
    return clients


# --- 3: emulator builds ------------------------------------------------------------------------------------


def build_emulators(args: argparse.Namespace, directory: Path) -> dict[str, dict[str, Any]]:
    """Build ScaleOT, uniform+distill and uniform emulators (timed); save ScaleOT and uniform as bundles."""
    import gc

    from emulator.data.corpus import public_blocks
    from emulator.lm.models import load_model
    from emulator.scaleot.assembly import build_emulator
    from emulator.scaleot.bundle import save_bundle

    model, tokenizer = load_model(args.model)
    built = {}
    for label, config in build_configs(args).items():
        emulator = build_emulator(model, config, public_blocks(tokenizer, config), progress=False)
        steps_field = config.traits.steps_field
        steps = config.to_dict()[steps_field] if steps_field else 0
        built[label] = {
            "method": config.method,
            "seconds": emulator.build_seconds,
            "steps": steps,
            "bundle": None,
        }
        if not config.traits.distills:  # same shape as without distillation: one step measurement covers both
            path = save_bundle(emulator, directory / config.method, args.model, tokenizer)
            built[label]["bundle"] = str(path)
        log.info("built %s in %.1f s", label, emulator.build_seconds)
        del emulator
        gc.collect()
    return built


# --- 4: framework overhead ---------------------------------------------------------------------------------


def round_overhead(args: argparse.Namespace, directory: Path) -> list[dict[str, float]]:
    """Per round of a short simulation: wall, evaluation and client-training seconds, and the rest."""
    from emulator.config import EmulatorConfig, TrainConfig
    from simulations.run_config import EvaluationConfig, FederationConfig, RunConfig
    from simulations.runner import simulate
    from strategies import wire

    config = RunConfig(
        name="benchmark",
        model=args.model,
        task=TASKS.get(args.model, "synthetic"),
        emulator=EmulatorConfig.of(method="uniform", alpha=args.alpha, rank_keep=1.0),
        federation=FederationConfig(num_clients=2, fraction=1.0, min_clients=2, rounds=3, partition="iid"),
        client=TrainConfig(batch_size=args.batch_size, local_steps=2, max_length=args.seq_len),
        evaluation=EvaluationConfig(test_limit=20, emulator_every=0, plug_in_every=0),
    )
    metrics = simulate(config, directory / "simulation")
    rounds = []
    for r in metrics["rounds"]:
        clients = r["client_metrics"].get(wire.TRAIN_SECONDS, 0.0) * r["aggregated"]  # IID: equal weights
        overhead = r["seconds"] - r["eval_seconds"] - clients
        rounds.append(
            {"wall": r["seconds"], "eval": r["eval_seconds"], "clients": clients, "overhead": overhead}
        )
    return rounds


# --- the emulator bundles when builds are not run ---------------------------------------------------------


def build_configs(args: argparse.Namespace) -> dict[str, EmulatorConfig]:
    """Label -> config of each emulator the builds section builds (ScaleOT, uniform+distill, uniform).

    Raises:
        ValueError: settings that make an invalid emulator config (``--alpha 2``).
    """
    from emulator.config import EmulatorConfig

    common = {"alpha": args.alpha, "stage1_steps": args.build_steps, "distill_steps": args.build_steps}
    if args.quick:
        common |= {"harmonizer_rank": 16, "batch_size": 2, "seq_len": 32}
    configs = {
        f"scaleot α={args.alpha:g} β={args.rank_keep:g}": {
            **METHODS["scaleot"].preset,
            "rank_keep": args.rank_keep,
        },
        f"uniform+distill α={args.alpha:g}": METHODS["uniform+distill"].preset,
        f"uniform α={args.alpha:g}": METHODS["uniform"].preset,
    }
    return {label: EmulatorConfig.from_dict(common | values) for label, values in configs.items()}


def emulator_config(args: argparse.Namespace, kind: str) -> EmulatorConfig:
    """The ``kind`` emulator of the benchmark's settings (ScaleOT at ``--rank-keep``, a baseline at its
    preset).

    Raises:
        ValueError: settings that make an invalid emulator config (``--alpha 2``).
    """
    from emulator.config import EmulatorConfig

    values = {"alpha": args.alpha, "rank_keep": args.rank_keep} | METHODS[kind].preset
    if METHODS[kind].steps_field:
        values[METHODS[kind].steps_field] = args.build_steps
    if args.quick:
        values |= {"harmonizer_rank": 16, "batch_size": 2, "seq_len": 32}
    return EmulatorConfig.from_dict(values)


def emulator_bundle(args: argparse.Namespace, model: nn.Module, tokenizer: Any, kind: str) -> str:
    """The ``kind`` emulator bundle (``emulator_config``), from the cache (built once)."""
    from simulations.server.bundle_cache import ensure_bundle

    return str(ensure_bundle(args.model, emulator_config(args, kind), model, tokenizer))


# --- report ------------------------------------------------------------------------------------------------


def client_table(clients: Mapping[str, Mapping[str, Any]], gemm: float | None) -> str:
    """Step time and memory per client model and code path; ratios to the full model's new path."""
    full = clients["full model"]
    lines = [
        "| client model | path | params (M) | FLOP bound (× full) | step s | × full | new / old "
        "| × own new path | needed GFLOP/s | × GEMM | peak MB | above load MB | peak × full |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, c in clients.items():
        name, _, path = label.partition(" · ")
        old, new = clients.get(f"{name} · old"), clients.get(name)
        rate = c["needed_flops"] / c["step_seconds"]
        cells = [
            name,
            path or "new",
            f"{c['params'] / 1e6:.1f}",
            f"{c['flops_per_token'] / full['flops_per_token']:.3f}",
            f"{c['step_seconds']:.3f}",
            f"{c['step_seconds'] / full['step_seconds']:.3f}",
            f"{c['step_seconds'] / old['step_seconds']:.3f}" if old and not path else "",
            f"{c['step_seconds'] / new['step_seconds']:.3f}" if new and path else "",
            f"{rate / 1e9:.1f}",
            f"{rate / gemm:.2f}" if gemm else "",
            f"{c['peak_bytes'] / 1e6:.0f}",
            f"{(c['peak_bytes'] - c['loaded_bytes']) / 1e6:.0f}",
            f"{c['peak_bytes'] / full['peak_bytes']:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_table(builds: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| emulator build | training steps | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {b['steps']} | {b['seconds']:.1f} |" for name, b in builds.items()]
    return "\n".join(lines)


def overhead_table(rounds: Sequence[Mapping[str, float]]) -> str:
    lines = ["| round | wall s | server eval s | clients' training s | overhead s |", "|---|---|---|---|---|"]
    for i, r in enumerate(rounds, 1):
        note = " (handshake)" if i == 1 else ""
        lines.append(
            f"| {i}{note} | {r['wall']:.1f} | {r['eval']:.1f} | {r['clients']:.1f} | {r['overhead']:.1f} |"
        )
    later = [r["overhead"] for r in rounds[1:]]
    if later:
        lines.append(f"| later rounds, mean | | | | {statistics.mean(later):.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from simulations.runner import quiet_environment

    quiet_environment()  # before torch is imported here and in the children: idle OpenMP threads sleep
    if args.child:
        print(json.dumps(measure_client(args.child, args)))
        return 0
    try:  # bad input is one line, before a model loads (a bad --json was found after the whole benchmark)
        check_args(args)
    except ValueError as error:
        error_line(error)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    from emulator.lm.models import load_model
    from emulator.methods import method_spec
    from simulations.studies.throughput import gemm_throughput, measure_scoring, scoring_table

    device = "cuda" if torch.cuda.is_available() else "cpu"
    sections, gemm, scoring, builds, clients, rounds = set(args.sections), None, {}, {}, {}, []
    try:
        model, tokenizer = load_model(args.model, device=device)
    except (ValueError, OSError) as error:  # an empty or broken model directory: transformers' traceback
        error_line(unloadable_model(args.model, error))
        return EXIT_USAGE
    # Made after the last early return, so that nothing leaves it behind.
    directory = Path(tempfile.mkdtemp(prefix="scaleot-benchmark-"))
    try:
        if "gemm" in sections:
            gemm = gemm_throughput(model, args.batch_size * args.seq_len)
            log.info("fp32 GEMM throughput on the model's shapes: %.1f GFLOP/s", gemm / 1e9)
        if "scoring" in sections:
            task = TASKS.get(args.model, "synthetic")
            scoring = measure_scoring(model, tokenizer, task, args.scoring_examples)
        if "builds" in sections:
            builds = build_emulators(args, directory)
        if "clients" in sections:
            bundles = {n: (b["bundle"], b["method"]) for n, b in builds.items() if b["bundle"]}
            if not bundles:
                label = f"scaleot α={args.alpha:g} β={args.rank_keep:g}"
                bundles = {label: (emulator_bundle(args, model, tokenizer, "scaleot"), "scaleot")}
                for kind in args.baselines:
                    bundles[f"{kind} α={args.alpha:g}"] = (
                        emulator_bundle(args, model, tokenizer, kind),
                        kind,
                    )
            del model  # the children load their own
            jobs = {"full model" + _path(v): ("full", v) for v in ("old", "new")}
            for name, (bundle, method) in bundles.items():
                # The method under study on every code path, the baselines on the default one.
                proposed = method_spec(method).role == "proposed"
                for variant in ("old", "new", "ckpt") if proposed else ("new",):
                    jobs[name + _path(variant)] = (bundle, variant)
            clients = measure_clients(jobs, args)
        if "overhead" in sections:
            rounds = round_overhead(args, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    header = (
        f"{args.model}, batch {args.batch_size} × {args.seq_len} tokens, median of {args.steps} steps "
        f"after {args.warmup}; {machine(device)}"
    )
    if gemm:
        header += f"; fp32 GEMM on the model's shapes: {gemm / 1e9:.1f} GFLOP/s"
    tables = [client_table(clients, gemm) if clients else "", scoring_table(scoring, gemm) if scoring else ""]
    tables += [build_table(builds) if builds else "", overhead_table(rounds) if rounds else ""]
    print("\n\n".join([header, *filter(None, tables)]))
    if args.json:
        payload = {"args": vars(args) | {"json": str(args.json)}, "machine": machine(device), "gemm": gemm}
        payload |= {"clients": clients, "scoring": scoring, "builds": builds, "rounds": rounds}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


def _path(variant: str) -> str:
    """Label suffix of a client code path; the new path has none, so that "full model" is the reference."""
    return "" if variant == "new" else f" · {variant}"


if __name__ == "__main__":
    raise SystemExit(main())

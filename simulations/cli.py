"""The ``scaleot`` command line.

Each subcommand is a ``Command``: a function that adds its arguments and a function that runs it, listed once
in ``COMMANDS``. Heavy imports (torch, transformers, flwr) happen inside the run functions, so
``scaleot --help`` stays fast. Bad input surfaces as ``ValueError`` / ``FileNotFoundError`` and becomes one
``error:`` line; a ``ValueError`` that none of our checks raised (one from inside numpy or Flower) is a bug,
and is reported with its traceback (``simulations.arguments.is_usage_error``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from emulator.methods import METHODS
from emulator.results import EMULATOR_FT, FULL_ZS, PLUG_IN
from simulations.arguments import (
    EXIT_USAGE,
    error_line,
    is_usage_error,
    non_negative_int,
    positive_int,
    raised_where,
)
from simulations.run_config import add_set_option, set_dotted
from simulations.runner import RunInterrupted, run_simulate, simulate_arguments
from simulations.server.export_run import RUN_ROWS, export_arguments, run_export
from simulations.studies.compare import compare_arguments, run_compare
from strategies.records import RunFailedError

log = logging.getLogger("scaleot")

SET_EXAMPLE = "FIELD=VALUE, e.g. harmonizer_loss=lm"  # --set of build-emulator and the study scripts
EXIT_RUN_FAILED = 1  # a run that ended without a result (nothing trained, nodes missing, backend crashed)
EXIT_INTERNAL = 1  # a bug of ours or of a library's, as Python's own exit status for an uncaught exception
EXIT_SIGNAL = 128  # + the signal's number, as a shell reports a process a signal ended
DEFAULT_MODEL = "smollm2-135m"


def _check_device(device: str) -> None:
    """Refuse ``--device cuda`` without CUDA in one line; torch's own error comes only once a model moves
    there, as a traceback."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no CUDA device; use --device cpu")


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` declares its options, ``run(args)`` does the work."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


# ------------------------------------------------------------------------------------------------------ eval


# ``--row`` as scripts wrote it before the results rows had one name each.
_OLD_ROW_NAMES = {"full": FULL_ZS, "emulator": EMULATOR_FT, "plug-in": PLUG_IN}


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,  # None, not the default model: --model with --run is refused
        help=f"smollm2-135m, tiny-*, a .gguf file, a hub id or a directory (default: {DEFAULT_MODEL}); "
        "not with --run",
    )
    parser.add_argument(
        "--task",
        default=None,
        help="e.g. arc_easy, piqa, olmo:csqa, synthetic (default with --run and no --harness: the run's "
        "task)",
    )
    parser.add_argument(
        "--harness",
        default=None,
        metavar="TASKS",
        help="score with lm-evaluation-harness instead (pip install -e '.[lmeval]'): comma-separated lm-eval "
        "task names or task YAML paths, e.g. hellaswag or docs/lm-eval/scaleot_synthetic.yaml",
    )
    parser.add_argument(
        "--run", dest="run_dir", default=None, help="score a model of this run directory, not --model"
    )
    parser.add_argument(
        "--row",
        choices=(*RUN_ROWS, *_OLD_ROW_NAMES),
        default=None,  # None, not plug_in: --row without --run is refused
        help=f"only with --run, which of its models: {', '.join(RUN_ROWS)} (default: {PLUG_IN})",
    )
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="score only the first N examples of the split (all of them when it has fewer: the table's n "
        "says so; default with --run on its task's test split: the run's evaluation.test_limit, else all)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences per forward pass")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=None,
        help="token budget per sequence (default: the run's evaluation.max_length with --run, else 512)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help="seed of the task's splits (default: the run's with --run, else 0)",
    )


def _run_eval(args: argparse.Namespace) -> None:
    """Zero-shot accuracy of one model (``--model``, or a row of ``--run``), printed as a markdown table: on a
    task of ours with our scorer, or on lm-eval tasks through lm-evaluation-harness (``--harness``)."""
    if args.run_dir is not None and not Path(args.run_dir).is_dir():  # first: the checks below read it
        problem = "is a file, not a directory" if Path(args.run_dir).exists() else "does not exist"
        raise ValueError(f"--run={args.run_dir} {problem}; give a run directory of scaleot simulate")
    if args.run_dir is not None and args.model is not None:
        raise ValueError(
            f"--model={args.model} does not go with --run: the model is the run's (--row picks which)"
        )
    if args.run_dir is None and args.row is not None:
        raise ValueError(f"--row={args.row} needs --run: it picks a model of a run directory")
    task, seed, limit, max_length = args.task, args.seed, args.limit, args.max_length or 512
    if args.run_dir is not None:
        run_task, run_seed, run_limit, run_max_length = _run_task(Path(args.run_dir))
        task = task if task is not None or args.harness else run_task
        seed = run_seed if seed is None else seed
        if args.max_length is None:  # truncation changes scores: the run's budget unless another is asked for
            max_length = run_max_length
            log.info("token budget %d per sequence, as the run's (its evaluation.max_length)", max_length)
        if (
            args.limit is None
            and run_limit
            and task == run_task
            and args.split == "test"
            and not args.harness
        ):
            # What the run scored: its numbers are reproduced only on the same first examples.
            limit = run_limit
            log.info(
                "scoring the first %d test examples, as the run did (its evaluation.test_limit; --limit "
                "changes it)",
                run_limit,
            )
    if (task is None) == (args.harness is None):
        raise ValueError("give one of --task (our scorer) and --harness (lm-evaluation-harness)")
    from emulator.evaluation.memo import memoised_accuracy
    from emulator.scaleot.fit import check_fits
    from simulations.harness import harness_scores, harness_tasks, run_model

    _check_device(args.device)
    # Tasks first: their errors are cheap to find, models are not.
    tasks, n_note = (
        (harness_tasks(args.harness), "")
        if args.harness
        else _our_examples(task, args.split, limit, seed or 0)
    )
    start = time.perf_counter()
    if args.run_dir is not None:  # not `args.run`: that is the subcommand's function
        row = _OLD_ROW_NAMES.get(args.row, args.row or PLUG_IN)
        label = f"{args.run_dir} ({row})"
        model, tokenizer = run_model(Path(args.run_dir), row, device=args.device)
    else:
        from emulator.lm.models import load_model

        label = args.model or DEFAULT_MODEL
        model, tokenizer = load_model(label, device=args.device)
    check_fits(model, lengths={"--max-length": max_length})
    log.info("loaded %s in %.1f s", label, time.perf_counter() - start)
    start = time.perf_counter()
    if args.harness:
        _print_harness(
            label, harness_scores(model, tokenizer, tasks, args.limit, args.batch_size), args.limit
        )
        return
    result = memoised_accuracy(
        model, tokenizer, tasks, batch_size=args.batch_size, max_length=max_length, progress=True
    )
    seconds = time.perf_counter() - start
    from simulations.server.outputs import pct

    print("| model | task | split | n | acc (%) | acc_norm (%) | eval time |")  # %, as every other table
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {label} | {task} | {args.split} | {result.n}{n_note} | {pct(result.acc, result.acc_stderr)} "
        f"| {pct(result.acc_norm, result.acc_norm_stderr)} | {seconds:.1f} s |"
    )


def _print_harness(label: str, scores: dict[str, dict[str, float]], limit: int | None) -> None:
    """lm-eval's scores as our table, with n as ours has it: the documents scored, noted when ``--limit``
    asked for more than the task holds."""
    from simulations.harness import METRICS
    from simulations.server.outputs import pct

    print("| model | lm-eval task | n | acc (%) | acc_norm (%) |")
    print("|---|---|---|---|---|")
    for task, m in scores.items():
        n = m.get("n")
        n_cell = "–" if n is None else f"{n} (all; --limit {limit})" if limit is not None and limit > n else n
        cells = [pct(m[k], m.get(k + "_stderr", float("nan"))) if k in m else "–" for k in METRICS]
        print(f"| {label} | {task} | {n_cell} | {' | '.join(cells)} |")


def _run_task(run_dir: Path) -> tuple[str, int, int, int]:
    """The task, split seed, test limit (0: all) and token budget a run was scored with: eval's defaults with
    --run, so that its test split is the run's (another seed's split could hold the clients' training
    examples) and its numbers are reproduced.

    Raises:
        ValueError: ``run_dir`` has no config.toml, or it cannot be read.
    """
    from simulations.run_config import load_config

    if not (run_dir / "config.toml").is_file():
        raise ValueError(f"--run={run_dir} is not a run directory: config.toml is missing")
    recorded = load_config(run_dir / "config.toml")
    evaluation = recorded.evaluation
    return recorded.task, recorded.seed, evaluation.test_limit, evaluation.max_length


def _our_examples(task: str, split: str, limit: int | None, seed: int) -> tuple[list, str]:
    """The first ``limit`` examples of the split (all with None), and the note the table's n gets when the
    split holds fewer (all of them are scored: the n alone would not say that the limit was not reached)."""
    from emulator.data.tasks import load_task

    examples = getattr(load_task(task, seed=seed), split)
    capped = limit is not None and limit > len(examples)
    return examples[:limit], f" (all; --limit {limit})" if capped else ""


# ------------------------------------------------------------------------------------------- build-emulator


def _build_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="smollm2-135m, tiny-*, a .gguf file, a hub id or a directory"
    )
    parser.add_argument(
        "--method",
        choices=tuple(METHODS),
        default=None,  # None, not scaleot: --method with --set method=... is refused
        help="default: scaleot",
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help="fraction of middle blocks replaced / dropped"
    )
    parser.add_argument(
        "--rank-keep", type=float, default=None, help="β: attention rank kept by SRC (1 = off)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="stage-1 steps (distillation steps for +distill)"
    )
    add_set_option(
        parser,
        "any EmulatorConfig field (TOML value), flat or by section: harmonizer_rank=8 or "
        "stage1.harmonizer_rank=8",
        dest="set",
        metavar="FIELD=VALUE",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--out",
        required=True,
        help="bundle directory to write: absent, empty, or an emulator bundle (which is replaced)",
    )


def _run_build_emulator(args: argparse.Namespace) -> None:
    """Build an emulator of a model and save it as a bundle; prints the layer map, sizes and build time."""
    from emulator.config import CompressesNothingError, EmulatorConfig
    from emulator.config_parse import nest_tables, nested_key, parse_assignment
    from emulator.data.corpus import public_blocks
    from emulator.lm.models import load_model
    from emulator.scaleot.assembly import build_emulator
    from emulator.scaleot.bundle import save_bundle
    from emulator.scaleot.fit import check_fits

    # Only a method that compresses nothing takes its preset (alpha 0, no SRC): build-emulator --method
    # uniform keeps SRC at its default, as it always has.
    method = args.method or "scaleot"
    traits = METHODS[method]
    values: dict[str, object] = traits.preset if not traits.compresses else {"method": method}
    given = _option_fields(args, traits.steps_field)
    values.update({field: value for field, (_, value) in given.items()})
    # Nested as `simulate --set emulator.…` nests them, so a field may be given flat (harmonizer_rank=8) or
    # by section (stage1.harmonizer_rank=8) and either form meets an option's value in one place.
    values = nest_tables(EmulatorConfig, values)
    option_of = {nested_key(EmulatorConfig, field): field for field in given}
    for item in args.set:
        key, value = parse_assignment(item, "--set", SET_EXAMPLE)
        key = nested_key(EmulatorConfig, key)
        if key in option_of:  # which of the two should win is a guess: --set used to, silently
            field = option_of[key]
            option, flag_value = given[field]
            raise ValueError(f"{option} {flag_value} and --set {item} both set {field}; give it once")
        set_dotted(values, key, value)
    try:
        config = EmulatorConfig.from_dict(values)  # first: config errors are cheap to find, models are not
    except CompressesNothingError as error:
        # The check's own remedy names the Python API; here each field it names came from an option.
        sources = [given[field][0] if field in given else f"--set {field}=..." for field in error.asked]
        raise error.with_remedy(f"drop {' and '.join(sources)}") from None
    _check_device(args.device)
    _check_bundle_out(Path(args.out))
    model, tokenizer = load_model(args.model, device=args.device)
    check_fits(model, config)
    emulator = build_emulator(model, config, public_blocks(tokenizer, config), progress=True)
    directory = save_bundle(emulator, args.out, args.model, tokenizer)
    print(
        f"emulator of {args.model} ({config.method}, alpha={config.alpha}, rank_keep={config.src.rank_keep})"
    )
    print(emulator.describe())
    print(f"build time: {emulator.build_seconds:.1f} s; bundle: {directory}")


def _option_fields(args: argparse.Namespace, steps_field: str | None) -> dict[str, tuple[str, object]]:
    """``{EmulatorConfig field: (option, value)}`` of the build-emulator options given on the command line."""
    options = {
        "--method": ("method", args.method),
        "--alpha": ("alpha", args.alpha),
        "--rank-keep": ("rank_keep", args.rank_keep),
        # A method that trains nothing ignores it (stage1_steps is in none of its sections).
        "--steps": (steps_field or "stage1_steps", args.steps),
    }
    return {field: (option, value) for option, (field, value) in options.items() if value is not None}


def _check_bundle_out(out: Path) -> None:
    """Refuse an ``--out`` that save_bundle would fail on, or mix a bundle into, before stage 1 runs rather
    than after: only an existing bundle's files are for it to overwrite."""
    from emulator.scaleot.bundle import MANIFEST

    allowed = "give an absent or empty directory, or an emulator bundle to replace"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out={out} is a file; {allowed}")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ValueError(f"--out={out} holds files but no {MANIFEST} (not an emulator bundle); {allowed}")


# ------------------------------------------------------------------------------------------------- registry

COMMANDS: tuple[Command, ...] = (
    Command("eval", "zero-shot multiple-choice accuracy of a model on a task", _eval_arguments, _run_eval),
    Command(
        "build-emulator",
        "build an emulator (ScaleOT or a baseline) of a model and save it as a bundle",
        _build_emulator_arguments,
        _run_build_emulator,
    ),
    Command(
        "simulate",
        "run a federated offsite-tuning experiment on Flower's simulation (Ray, or in-process)",
        simulate_arguments,
        run_simulate,
    ),
    Command(
        "compare",
        "compare ScaleOT with zero-shot and the baselines ("
        + ", ".join(m for m in METHODS if m != "scaleot")
        + "), each as a federated simulation of one base config",
        compare_arguments,
        run_compare,
    ),
    Command(
        "export",
        "write a run's plug-in model (transformers checkpoint) and LoRA adapter (peft directory)",
        export_arguments,
        run_export,
    ),
)


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    """The ``scaleot`` parser with one subparser per entry of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="scaleot", description="ScaleOT offsite-tuning with many data owners on Flower"
    )
    parser.add_argument("--log-level", default="INFO", choices=_LOG_LEVELS)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        # Also after the command (`scaleot eval --log-level DEBUG`), as users write it; SUPPRESS keeps the
        # value given before the command when this one is absent.
        sub.add_argument(
            "--log-level", default=argparse.SUPPRESS, choices=_LOG_LEVELS, help="as before the command"
        )
        sub.set_defaults(run=command.run)
    return parser


def _setup_logging(level: str) -> None:
    # basicConfig leaves an already configured root logger (e.g. pytest's) alone.
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("scaleot").setLevel(level)
    # Progress comes as our own log lines; transformers' per-load weight bars would bury them (the user may
    # still turn them back on). Set before transformers is imported by a subcommand, and inherited by Ray.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _error_line_with_debug_traceback(error: BaseException) -> None:
    """The one ``error:`` line of an expected failure; with ``--log-level DEBUG`` its traceback first, to say
    where a check fired."""
    log.debug("traceback of the error below:", exc_info=error)
    error_line(error)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scaleot`` console script.

    Args:
        argv: arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0 on success, 2 on bad input, 1 for a run that ended without a result or a file that
        could not be written (one ``error:`` line on stderr, its traceback only with ``--log-level DEBUG``),
        1 for an internal error (a ``ValueError`` raised inside a library: its traceback, then one
        ``error: internal error in ...`` line). SIGTERM or SIGINT during a run ends the process at once with
        128 + the signal's number, after its one line.
    """
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        args.run(args)
    except ValueError as error:
        if not is_usage_error(error):
            # Not a check of ours: its message alone says neither where it came from nor that it is a bug.
            log.error("traceback of the internal error below:", exc_info=error)
            error_line(f"internal error in {raised_where(error)}: {error} (traceback above; please report)")
            return EXIT_INTERNAL
        _error_line_with_debug_traceback(error)
        return EXIT_USAGE
    except FileNotFoundError as error:  # a path the user gave, wherever the open failed
        _error_line_with_debug_traceback(error)
        return EXIT_USAGE
    except (RunFailedError, OSError) as error:  # OSError: a file that could not be written (a full disk)
        _error_line_with_debug_traceback(error)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt:  # Ctrl-C outside a run (a run raises RunInterrupted)
        error_line("interrupted")
        return EXIT_SIGNAL + signal.SIGINT
    except RunInterrupted as stop:
        error_line(stop)
        # Now, not after the ServerApp thread's current step (a model load or scoring can take minutes):
        # every file of the run is written atomically, so its directory is resumable as it is.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_SIGNAL + stop.signum)
    return 0


if __name__ == "__main__":
    sys.exit(main())

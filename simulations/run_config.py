"""The run config: one frozen, validated dataclass tree, parsed once from TOML plus ``key=value`` overrides.

Sections: top-level ``model``, ``task``, ``seed``, ``name``; ``[emulator]``
(``emulator.config.EmulatorConfig``), ``[adapter]`` (``emulator.config.AdapterConfig``), ``[federation]``,
``[client]`` (``emulator.config.TrainConfig``), ``[evaluation]``, ``[simulation]``, ``[output]`` and
``[privacy]`` (``strategies.privacy_config.DPConfig``).
Keys may be written with ``-`` or ``_``. Unknown keys are errors listing the valid ones; every value is
checked before any model is loaded.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from emulator.config import (
    PARTITION_SCHEMES,
    AdapterConfig,
    EmulatorConfig,
    TrainConfig,
    corpus_exclusion,
)
from emulator.config_parse import (
    build_config,
    nest_tables,
    nested_key,
    parse_assignment,
    parse_typed,
    split_assignment,
)
from emulator.files import read_json, read_text
from emulator.methods import methods_with
from emulator.results import EMULATOR_FT, EMULATOR_ZS, FULL_ZS, PLUG_IN
from strategies.privacy_config import DPConfig, drop_written_defaults

MISSING_NODES = ("fail", "proceed")  # what happens when fewer nodes than needed connect in time
INPROCESS = "inprocess"  # simulation.backend: every client in the run's own process (simulations.inprocess)
BACKENDS = ("ray", INPROCESS)


@dataclass(frozen=True)
class FederationConfig:
    """Who takes part and how their adapters are combined."""

    num_clients: int = 4  # simulated SuperNodes, one partition each
    fraction: float = 1.0  # fraction of clients sampled per round
    min_clients: int = 1  # at least this many sampled per round
    rounds: int = 2  # federated rounds
    strategy: str = "fedavg"  # Flower aggregation: strategies.offsite.STRATEGIES
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)  # its own arguments, e.g. proximal_mu, eta
    partition: str = "iid"  # train-set split: emulator.config.PARTITION_SCHEMES says what each skews
    dirichlet_alpha: float = 0.5  # Dirichlet concentration; smaller is more skewed
    node_timeout: float = 600.0  # seconds to wait for nodes before a round (num_clients before round 1,
    # min_clients later); then on_missing_nodes decides
    on_missing_nodes: str = "fail"  # fail: stop the run with an error; proceed: train on the nodes present
    handshake_timeout: float = 600.0  # seconds to wait for the emulator handshake replies of new nodes
    round_timeout: float = 3600.0  # seconds to wait for train replies; a reply arriving later is dropped
    fail_partitions: tuple[int, ...] = ()  # test hook: these partitions raise in training every round
    crash_partitions: tuple[int, ...] = ()  # test hook: these partitions' client process exits mid-round
    slow_partitions: tuple[int, ...] = ()  # test hook: these partitions sleep slow_seconds before training
    slow_seconds: float = 0.0  # how long the slow_partitions sleep
    # FedBiOT's re-alignment between rounds (emulator.scaleot.realign): after each aggregation the server
    # trains the emulator's harmonizers this many AdamW steps toward the full model, adapters in place, and
    # sends them with the next round. 0: off (the default until it is measured to pay).
    realign_steps: int = 0
    realign_lr: float = 1e-3  # AdamW learning rate of that re-alignment

    def __post_init__(self) -> None:
        _check(self.num_clients >= 1, "federation.num_clients", self.num_clients, ">= 1")
        _check(0 < self.fraction <= 1, "federation.fraction", self.fraction, "in (0, 1]")
        _check(
            1 <= self.min_clients <= self.num_clients,
            "federation.min_clients",
            self.min_clients,
            f"in [1, num_clients={self.num_clients}]",
        )
        _check(self.rounds >= 1, "federation.rounds", self.rounds, ">= 1")
        _check(
            self.partition in PARTITION_SCHEMES,
            "federation.partition",
            self.partition,
            f"one of {', '.join(PARTITION_SCHEMES)}",
        )
        _check(self.dirichlet_alpha > 0, "federation.dirichlet_alpha", self.dirichlet_alpha, "> 0")
        from strategies.offsite import check_strategy_kwargs  # flwr: only when a config is built

        # Typed as Flower declares them, so the run and its saved config.toml hold what the strategy took.
        kwargs = check_strategy_kwargs(self.strategy, self.strategy_kwargs)
        object.__setattr__(self, "strategy_kwargs", kwargs)
        for name in ("node_timeout", "handshake_timeout", "round_timeout"):
            _check(getattr(self, name) > 0, f"federation.{name}", getattr(self, name), "> 0 seconds")
        _check(
            self.on_missing_nodes in MISSING_NODES,
            "federation.on_missing_nodes",
            self.on_missing_nodes,
            f"one of {', '.join(MISSING_NODES)}",
        )
        for name in ("fail_partitions", "crash_partitions", "slow_partitions"):
            ids = getattr(self, name)
            bad = [p for p in ids if not 0 <= p < self.num_clients]
            _check(not bad, f"federation.{name}", list(ids), f"partition ids in [0, {self.num_clients})")
        _check(self.slow_seconds >= 0, "federation.slow_seconds", self.slow_seconds, ">= 0")
        _check(self.realign_steps >= 0, "federation.realign_steps", self.realign_steps, ">= 0 (0: off)")
        _check(self.realign_lr > 0, "federation.realign_lr", self.realign_lr, "> 0")


@dataclass(frozen=True)
class EvaluationConfig:
    """Server-side evaluation of the plug-in model and the emulator."""

    test_limit: int = 0  # evaluate on the first k test examples; 0: all of them
    emulator_every: int = 1  # evaluate emulator fine-tuned every k rounds (and the last); 0: last only
    plug_in_every: int = 1  # evaluate plug-in every k rounds (and the last, and with the emulator); 0: those
    batch_size: int = 16  # examples per scoring batch
    max_length: int = 512  # token budget per scored (context, choice); longer contexts are cut from the left
    progress: bool = True  # a tqdm bar while scoring; shown only when stderr is a terminal

    def __post_init__(self) -> None:
        _check(self.test_limit >= 0, "evaluation.test_limit", self.test_limit, ">= 0 (0: all)")
        _check(
            self.emulator_every >= 0, "evaluation.emulator_every", self.emulator_every, ">= 0 (0: last only)"
        )
        _check(self.plug_in_every >= 0, "evaluation.plug_in_every", self.plug_in_every, ">= 0 (0: last only)")
        _check(self.batch_size >= 1, "evaluation.batch_size", self.batch_size, ">= 1")
        _check(self.max_length >= 2, "evaluation.max_length", self.max_length, ">= 2")
        _check(isinstance(self.progress, bool), "evaluation.progress", self.progress, "true or false")


@dataclass(frozen=True)
class SimulationConfig:
    """The backend of ``scaleot simulate``: Ray under ``flwr.simulation.run_simulation``, or in-process."""

    # ray: Flower's simulation engine, one process per ClientApp actor; inprocess: every client in the run's
    # own process, one after another (no Ray; for tests and debugging: simulations/inprocess.py)
    backend: str = "ray"
    client_num_cpus: float = 0  # CPUs per ClientApp actor; 0: all cores, i.e. one actor (one emulator copy)
    client_num_gpus: float = -1  # GPUs per actor; -1: 1 when CUDA is present, else 0
    ray_address: str = ""  # join an existing Ray cluster ("auto" or "ray://host:10001"); "": start one
    ray_init_args: dict[str, Any] = field(default_factory=dict)  # further ray.init keyword arguments

    def __post_init__(self) -> None:
        _check(self.backend in BACKENDS, "simulation.backend", self.backend, f"one of {', '.join(BACKENDS)}")
        _check(self.client_num_cpus >= 0, "simulation.client_num_cpus", self.client_num_cpus, ">= 0 (0: all)")
        _check(
            self.client_num_gpus >= -1,
            "simulation.client_num_gpus",
            self.client_num_gpus,
            ">= 0 or -1 (auto)",
        )
        reserved = sorted({"address", "runtime_env"} & set(self.ray_init_args))
        _check(
            not reserved,
            "simulation.ray_init_args",
            reserved,
            "free of address (use ray_address) and runtime_env",
        )
        if self.backend == INPROCESS:
            for name in ("ray_address", "ray_init_args"):
                value = getattr(self, name)
                _check(not value, f"simulation.{name}", value, "empty with simulation.backend='inprocess'")


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"  # run directories are created under this one (relative to the working directory)
    # Each round's metrics as TensorBoard scalars in <run>/tensorboard (pip install -e '.[tracking]').
    tensorboard: bool = False
    # plug-in/ (the full model with the final adapter, save_pretrained; ~540 MB on SmolLM2-135M) at the end of
    # the run. Off, the run keeps only adapter.safetensors; `scaleot export RUN_DIR` writes plug-in/ later.
    export_plug_in: bool = True

    def __post_init__(self) -> None:
        for name in ("tensorboard", "export_plug_in"):
            value = getattr(self, name)
            _check(isinstance(value, bool), f"output.{name}", value, "true or false")


@dataclass(frozen=True)
class RunConfig:
    """One experiment: model, task, emulator, adapter, federation, client training, evaluation, backend."""

    name: str = "run"  # run-directory prefix
    model: str = "tiny-llama"  # emulator.lm.models.load_model name, hub id or directory
    task: str = "synthetic"  # emulator.data.tasks.load_task name
    seed: int = 0  # task split, partitions, client sampling and client seeds
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    client: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    # Central differential privacy on the aggregated adapter (strategies.privacy.DPConfig); off by default.
    privacy: DPConfig = field(default_factory=DPConfig)

    def __post_init__(self) -> None:
        from emulator.lm.models import check_model_name  # torch: only when a config is built, not imported

        check_model_name(self.model)
        # The name prefixes a folder inside output.dir: a separator or a leading dot would put it elsewhere.
        plain = bool(re.fullmatch(r"[^/\\.][^/\\]*", self.name))
        _check(plain, "name", self.name, "a folder name: no / or \\, not starting with '.'")
        _check(bool(self.task), "task", self.task, "a task name")
        from emulator.data.tasks import check_task_name  # here, so a wrong name fails before Ray starts

        check_task_name(self.task)
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        # DP's noise assumes an unweighted average; clients are weighted by their steps, so fix the steps.
        dp_ok = not self.privacy.enabled or self.client.local_steps > 0
        _check(dp_ok, "client.local_steps", self.client.local_steps, "> 0 when [privacy] is on")
        if self.privacy.enabled:
            from strategies.offsite import averaging_strategies  # flwr: only when a config is built

            averaging = averaging_strategies()
            allowed = f"one of {', '.join(averaging)} when [privacy] is on (DP noises an average)"
            _check(
                self.federation.strategy in averaging,
                "federation.strategy",
                self.federation.strategy,
                allowed,
            )
        self._exclude_task_from_corpus()
        # Re-alignment trains harmonizers: a method without them (or α = 0, which places none) has none.
        harmonized = self.emulator.traits.harmonizers and self.emulator.alpha > 0
        methods = " or ".join(map(repr, methods_with(harmonizers=True)))
        allowed = f"0 unless the emulator has harmonizers (method={methods} with alpha > 0)"
        steps = self.federation.realign_steps
        _check(harmonized or not steps, "federation.realign_steps", steps, allowed)
        if self.simulation.backend == INPROCESS:
            # A client that exits would end the run's own process; a slow one cannot be cut off by the round
            # timeout when clients run one after another.
            for name in ("crash_partitions", "slow_partitions"):
                ids = list(getattr(self.federation, name))
                allowed = "empty with simulation.backend='inprocess' (it needs client processes: use 'ray')"
                _check(not ids, f"federation.{name}", ids, allowed)

    def _exclude_task_from_corpus(self) -> None:
        # Stage 1 must never see the evaluated task: the Wikipedia corpus is checked not to hold it.
        task = corpus_exclusion(self.task)
        data = self.emulator.data
        if data.corpus != "wikipedia" or not task or data.corpus_exclude == task:
            return
        _check(
            not data.corpus_exclude,
            "emulator.corpus_exclude",
            data.corpus_exclude,
            f"empty or the run's task {task!r}",
        )
        object.__setattr__(self, "emulator", self.emulator.updated(corpus_exclude=task))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from nested dicts (parsed TOML).

        Raises:
            ValueError: an unknown key (listing the valid ones) or an invalid value.
        """
        return build_config(cls, values)

    def to_dict(self) -> dict[str, Any]:
        # The flat emulator form users write; privacy without the settings its clipping ignores.
        data = asdict(self) | {"emulator": self.emulator.to_dict(), "privacy": self.privacy.to_dict()}
        for name in ("fail_partitions", "crash_partitions", "slow_partitions"):
            data["federation"][name] = list(getattr(self.federation, name))
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML run config and apply ``section.key=value`` overrides (values in TOML syntax).

    Raises:
        ValueError: unreadable file, malformed override, unknown key or invalid value.
    """
    return RunConfig.from_dict(apply_overrides(read_config_file(path), overrides))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a config file.

    Raises:
        ValueError: the file is missing or unreadable, is not UTF-8 or is not valid TOML; one line naming it.
    """
    text = read_text(path, "TOML")
    try:
        return upgrade_config(tomllib.loads(text))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"cannot read config {path}: {err}") from None


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config file's table as today's ``RunConfig.to_dict`` writes it: renamed keys (``upgrade_keys``), and
    a run directory's ``[privacy]`` without the settings its clipping ignores (``drop_written_defaults``)."""
    data = upgrade_keys(data)
    if "privacy" in data:
        data["privacy"] = drop_written_defaults(data["privacy"])
    return data


# Keys renamed since run directories were first written (plug-in has one spelling: ``plugin_acc`` became
# ``plug_in_acc``, ``evaluation.plugin_every`` ``plug_in_every``). Files of older runs are read with the new
# names, so a run directory from before can still be resumed, reused by compare or reported.
# ``client.checkpoint_middle`` became ``checkpoint_blocks`` when checkpointing took in the adapter blocks too.
# The results rows got one name each (emulator.results.ROWS): metrics.json's and state.json's rows were keyed
# by their labels ("Emulator-FT") and the round records' emulator fine-tuned metrics were ``emulator_acc*``.
_RENAMED_PREFIXES = (("plugin_", "plug_in_"), ("emulator_acc", "emulator_ft_acc"))
_RENAMED = {
    "checkpoint_middle": "checkpoint_blocks",
    "Full-ZS": FULL_ZS,
    "Emulator-ZS": EMULATOR_ZS,
    "Emulator-FT": EMULATOR_FT,
    "Plug-in": PLUG_IN,
}


def upgrade_keys(data: Any) -> Any:
    """Parsed JSON / TOML with each key written before a rename (``_RENAMED_PREFIXES``, ``_RENAMED``) given
    its new name."""

    def renamed(key: str) -> str:
        for old, new in _RENAMED_PREFIXES:
            if key.startswith(old):
                return new + key.removeprefix(old)
        return _RENAMED.get(key, key)

    if isinstance(data, Mapping):
        return {renamed(k): upgrade_keys(v) for k, v in data.items()}
    return [upgrade_keys(v) for v in data] if isinstance(data, list) else data


def read_run_json(path: str | Path) -> dict[str, Any]:
    """A JSON file of a run directory (``config.json``, ``metrics.json``, ``state.json``), keys upgraded.

    Raises:
        ValueError: the file is missing, unreadable, not JSON (truncated, say) or not a JSON object; one line
            that names it.
    """
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not the object a run writes")
    return upgrade_keys(data)


def read_saved_config(path: str | Path) -> dict[str, Any]:
    """A run directory's ``config.json`` as today's ``RunConfig.to_json`` would write it: a field added since
    the run started takes its default, so an earlier run still compares equal to the same config (resume,
    compare's reuse). A file that no longer parses is returned as it is (keys upgraded), to be reported."""
    saved = upgrade_config(read_run_json(path))
    try:
        return json.loads(RunConfig.from_dict(saved).to_json())
    except ValueError:
        return saved


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with each ``a.b.c=value`` set; a value that is not valid TOML is taken as a string.

    Both ``data`` and each key are first put in the nested form (``nest_tables``, ``nested_key``), so an
    override replaces the file's value whether either writes it flat (``emulator.harmonizer_rank``) or
    nested (``emulator.stage1.harmonizer_rank``).
    """
    result = nest_tables(RunConfig, json.loads(json.dumps(data)))
    for item in overrides:
        key, value = parse_assignment(item)
        set_dotted(result, nested_key(RunConfig, key), value)
    return result


def add_set_option(
    parser: argparse.ArgumentParser,
    help: str = "override a config value, e.g. --set federation.rounds=3 (repeatable)",
    dest: str = "overrides",
    metavar: str = "KEY=VALUE",
) -> None:
    """The ``--set KEY=VALUE`` option of every command and study script (repeatable; ``apply_overrides``
    reads the run-config form, ``build-emulator`` and ``measure_emulators`` take emulator fields)."""
    parser.add_argument("--set", dest=dest, action="append", default=[], metavar=metavar, help=help)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key="a.b.c"`` (creating tables; ``-`` read as ``_``)."""
    *parents, leaf = [part.replace("-", "_") for part in key.split(".")]
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} is a value, not a section")
    node[leaf] = value


# Config keys a resumed run may change: more rounds, how often to evaluate, backend settings. Not the test set
# (test_limit) or the scoring budget (max_length): the checkpoint's zero-shot rows were scored with them.
RESUMABLE = (
    "federation.rounds",
    "evaluation.emulator_every",
    "evaluation.plug_in_every",
    "evaluation.batch_size",
    "simulation.",
    "output.",
)


def resumable_keys() -> str:
    """``RESUMABLE`` for messages: ``federation.rounds, ..., simulation.*, output.*``."""
    return ", ".join(p + "*" if p.endswith(".") else p for p in RESUMABLE)


def check_resumable(run_dir: Path, config: RunConfig) -> None:
    """Refuse to continue ``run_dir`` under a config that changes what was trained.

    Raises:
        ValueError: ``run_dir`` has no config.json, a key outside ``RESUMABLE`` differs (the first few are
            named with both values), or ``federation.rounds`` is below the rounds its metrics.json says
            were done.
    """
    saved_path = Path(run_dir) / "config.json"
    if not saved_path.is_file():
        raise ValueError(f"--resume {run_dir}: not a run directory (no config.json)")
    metrics = Path(run_dir) / "metrics.json"  # none yet: stopped before its first round ended
    done = read_run_json(metrics).get("rounds_done", 0) if metrics.is_file() else 0
    rounds = config.federation.rounds
    if rounds < done:
        # Its config and results would disagree (config.toml saying fewer rounds than metrics.json has).
        raise ValueError(
            f"federation.rounds={rounds} is below the {done} rounds {run_dir} has done; resume it with "
            f"federation.rounds >= {done}, or start a new run"
        )
    saved, new = _flatten(read_saved_config(saved_path)), _flatten(json.loads(config.to_json()))
    changed = sorted(k for k in differing_keys(saved, new) if not k.startswith(RESUMABLE))
    if changed:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed[:3])
        raise ValueError(
            f"--resume {run_dir} was started with another config ({shown}); only "
            f"{resumable_keys()} may change on resume"
        )


def differing_keys(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted keys whose value differs between two configs (``RunConfig.to_dict`` shapes, flat or nested),
    in ``new``'s order, then the keys only ``saved`` has; a key one of them lacks counts as differing."""
    saved, new = _flatten(saved), _flatten(new)
    absent = object()
    keys = [*new, *(k for k in saved if k not in new)]
    return [k for k in keys if saved.get(k, absent) != new.get(k, absent)]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and key != "strategy_kwargs":
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config {name}={value!r} is invalid; it must be {allowed}")


def resume_config(run_dir: Path, overrides: Sequence[str]) -> RunConfig:
    """The config a run directory was started with, plus overrides of the keys that may change on resume.

    Raises:
        ValueError: no config in ``run_dir``, an unknown key or invalid value (as for a new run), or an
            override of a key that would change what was trained.
    """
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.toml)")
    config = load_config(path, overrides)  # first: an unknown key is named as such, not as one not to change
    frozen = [o for o in overrides if not nested_key(RunConfig, split_assignment(o)[0]).startswith(RESUMABLE)]
    if frozen:
        raise ValueError(f"on resume only {resumable_keys()} may change; not {', '.join(frozen)}")
    return config


# Keys of Flower's run config (pyproject `[tool.flwr.app.config]` + `flwr run --run-config`) that are not
# config-file keys. Flower accepts only --run-config keys that pyproject declares; pyproject declares the main
# experiment keys too (value "" there: keep the config file's), and `overrides` reaches every other key.
RUN_CONFIG_FILE, RUN_DIR, RUN_RESUME, RUN_OVERRIDES = "config-file", "run-dir", "resume", "overrides"
RUN_OVERWRITE = "overwrite"  # read by the ServerApp (simulations.server.app.run_dir_of), not a config key
UNSET = ""  # a declared experiment key left at this value keeps the config file's value


def from_flower_run_config(run_config: Mapping[str, Any], root: Path) -> tuple[RunConfig, str, bool]:
    """Parse Flower's flattened run config into the run config, the run directory and the resume flag.

    Keys: ``config-file`` (relative to ``root``), ``run-dir`` ("" for a new directory), ``resume`` (continue
    ``run-dir`` from its checkpoint, with the config it was started with: ``config-file`` is then ignored and
    only ``RESUMABLE`` keys may change), ``overrides`` (space-separated ``section.key=value``, shell-quoted),
    ``overwrite`` (left to the ServerApp: a new run may replace the run in ``run-dir``).
    Any other key is a dotted config key (``federation.rounds``): unless it is ``""`` it overrides the config
    file, and ``overrides`` comes last.

    Raises:
        ValueError: no ``config-file``, ``resume`` without ``run-dir``, or any error of ``load_config``.
    """
    if RUN_CONFIG_FILE not in run_config:
        raise ValueError(f"the Flower run config needs {RUN_CONFIG_FILE!r} (see [tool.flwr.app.config])")
    # Typed as pyproject declares them; Flower passes `resume="false"` as the string, which bool() calls true.
    run_dir = parse_typed(run_config.get(RUN_DIR, ""), str, f"run config {RUN_DIR}")
    resume = parse_typed(run_config.get(RUN_RESUME, False), bool, f"run config {RUN_RESUME}")
    overrides = [
        f"{key}={tomli_w.dumps({'v': value})[4:].strip()}"
        for key, value in run_config.items()
        if key not in (RUN_CONFIG_FILE, RUN_DIR, RUN_RESUME, RUN_OVERRIDES, RUN_OVERWRITE) and value != UNSET
    ]
    overrides += shlex.split(
        parse_typed(run_config.get(RUN_OVERRIDES, ""), str, f"run config {RUN_OVERRIDES}")
    )
    if resume:
        if not run_dir:
            raise ValueError(f"run config resume=true needs {RUN_DIR!r}, the run directory to continue")
        return resume_config(Path(run_dir), overrides), run_dir, True
    path = Path(parse_typed(run_config[RUN_CONFIG_FILE], str, f"run config {RUN_CONFIG_FILE}"))
    return load_config(path if path.is_absolute() else root / path, overrides), run_dir, False

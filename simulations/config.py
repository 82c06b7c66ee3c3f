"""The run config: one frozen, validated dataclass tree, parsed once from TOML plus ``key=value`` overrides.

Sections: top-level ``model``, ``task``, ``seed``, ``name``; ``[emulator]``
(``emulator.config.EmulatorConfig``), ``[adapter]`` (``emulator.adapters.AdapterConfig``), ``[federation]``,
``[client]`` (``clients.training.TrainConfig``), ``[evaluation]``, ``[simulation]`` and ``[output]``.
Keys may be written with ``-`` or ``_``. Unknown keys are errors listing the valid ones; every value is
checked before any model is loaded.
"""

from __future__ import annotations

import json
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from clients.training import TrainConfig
from emulator.adapters import AdapterConfig
from emulator.config import EmulatorConfig
from emulator.models import MODEL_NAMES
from strategies.offsite import strategy_parameters

PARTITION_SCHEMES = ("iid", "dirichlet")


@dataclass(frozen=True)
class FederationConfig:
    """Who takes part and how their adapters are combined."""

    num_clients: int = 4  # simulated SuperNodes, one partition each
    fraction: float = 1.0  # fraction of clients sampled per round
    min_clients: int = 1  # at least this many sampled per round
    rounds: int = 2  # federated rounds
    strategy: str = "fedavg"  # Flower aggregation: strategies.offsite.STRATEGIES
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)  # its own arguments, e.g. proximal_mu, eta
    partition: str = "iid"  # split of the task's train set: iid or dirichlet (label skew)
    dirichlet_alpha: float = 0.5  # Dirichlet concentration; smaller is more skewed
    fail_partitions: tuple[int, ...] = ()  # test hook: these partitions raise in training every round

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
        valid = strategy_parameters(self.strategy)
        unknown = sorted(set(self.strategy_kwargs) - set(valid))
        _check(
            not unknown,
            "federation.strategy_kwargs",
            unknown,
            f"arguments of {self.strategy}: {', '.join(valid) or '(it takes none)'}",
        )
        bad = [p for p in self.fail_partitions if not 0 <= p < self.num_clients]
        _check(
            not bad,
            "federation.fail_partitions",
            list(self.fail_partitions),
            f"partition ids in [0, {self.num_clients})",
        )


@dataclass(frozen=True)
class EvaluationConfig:
    """Server-side evaluation of the plug-in model and the emulator."""

    test_limit: int = 0  # evaluate on the first k test examples; 0: all of them
    emulator_every: int = 1  # evaluate emulator fine-tuned every k rounds (and the last); 0: last only
    plugin_every: int = 1  # evaluate plug-in every k rounds (and the last, and with the emulator); 0: those
    batch_size: int = 16  # examples per scoring batch

    def __post_init__(self) -> None:
        _check(self.test_limit >= 0, "evaluation.test_limit", self.test_limit, ">= 0 (0: all)")
        _check(
            self.emulator_every >= 0, "evaluation.emulator_every", self.emulator_every, ">= 0 (0: last only)"
        )
        _check(self.plugin_every >= 0, "evaluation.plugin_every", self.plugin_every, ">= 0 (0: last only)")
        _check(self.batch_size >= 1, "evaluation.batch_size", self.batch_size, ">= 1")


@dataclass(frozen=True)
class SimulationConfig:
    """The Ray backend of ``flwr.simulation.run_simulation``."""

    client_num_cpus: float = 0  # CPUs per ClientApp actor; 0: all cores, i.e. one actor (one emulator copy)
    client_num_gpus: float = -1  # GPUs per actor; -1: 1 when CUDA is present, else 0
    ray_address: str = ""  # join an existing Ray cluster ("auto" or "ray://host:10001"); "": start one
    ray_init_args: dict[str, Any] = field(default_factory=dict)  # further ray.init keyword arguments

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"  # run directories are created under this one (relative to the working directory)


@dataclass(frozen=True)
class RunConfig:
    """One experiment: model, task, emulator, adapter, federation, client training, evaluation, backend."""

    name: str = "run"  # run-directory prefix
    model: str = "tiny-llama"  # emulator.models.load_model name, hub id or directory
    task: str = "synthetic"  # emulator.tasks.load_task name
    seed: int = 0  # task split, partitions, client sampling and client seeds
    emulator: EmulatorConfig = field(default_factory=EmulatorConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    client: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        known = self.model in MODEL_NAMES or "/" in self.model or Path(self.model).is_dir()
        _check(known, "model", self.model, f"one of {', '.join(MODEL_NAMES)}, a hub id or a directory")
        _check(bool(self.task), "task", self.task, "a task name")
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        self._exclude_task_from_corpus()

    def _exclude_task_from_corpus(self) -> None:
        # Stage 1 must never see the evaluated task: the BIG-bench corpus leaves this run's task out.
        task = self.task.removeprefix("bigbench:")
        if self.emulator.corpus != "bigbench" or task == self.task or self.emulator.corpus_exclude == task:
            return
        _check(
            not self.emulator.corpus_exclude,
            "emulator.corpus_exclude",
            self.emulator.corpus_exclude,
            f"empty or the run's task {task!r}",
        )
        object.__setattr__(self, "emulator", replace(self.emulator, corpus_exclude=task))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from nested dicts (parsed TOML).

        Raises:
            ValueError: an unknown key (listing the valid ones) or an invalid value.
        """
        return _build(cls, values, "")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["federation"]["fail_partitions"] = list(self.federation.fail_partitions)
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
        ValueError: the file cannot be read or is not valid TOML.
    """
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"cannot read config {path}: {err}") from None


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` with each ``a.b.c=value`` set; a value that is not valid TOML is taken as a string."""
    result = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like section.key=value")
        set_dotted(result, key.strip(), parse_value(raw.strip()))
    return result


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``key="a.b.c"`` (creating tables; ``-`` read as ``_``)."""
    *parents, leaf = [part.replace("-", "_") for part in key.split(".")]
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {part!r} is a value, not a section")
    node[leaf] = value


def parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"config section {prefix.rstrip('.') or '(top)'} must be a table, got {values!r}")
    if cls is EmulatorConfig:
        return EmulatorConfig.from_dict(values)
    valid = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in valid:
            where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
            raise ValueError(
                f"unknown config key {prefix + key!r} in {where}; valid keys: {', '.join(valid)}"
            )
        kwargs[name] = _convert(valid[name], value, prefix + name)
    return cls(**kwargs)


def _convert(spec: Any, value: Any, name: str) -> Any:
    default = spec.default_factory() if callable(spec.default_factory) else spec.default
    if hasattr(default, "__dataclass_fields__"):
        return _build(type(default), value, name + ".")
    if isinstance(default, dict):
        if not isinstance(value, Mapping):
            raise ValueError(f"config {name}={value!r} must be a table")
        return {k.replace("-", "_"): v for k, v in value.items()}
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"config {name}={value!r} must be a list")
        return tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        if type(value) is not type(default):
            raise ValueError(f"config {name}={value!r} must be a {type(default).__name__}")
        return value
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, int | float | str) and not isinstance(value, type(default)):
        raise ValueError(f"config {name}={value!r} must be a {type(default).__name__}")
    return value


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"config {name}={value!r} is invalid; it must be {allowed}")


# Keys of Flower's run config (pyproject `[tool.flwr.app.config]` + `flwr run --run-config`) that are not
# config-file keys. Flower only accepts --run-config keys that pyproject declares, so every config-file key is
# reachable through the one string `overrides`, e.g. --run-config "overrides='federation.rounds=1 seed=3'".
RUN_CONFIG_FILE, RUN_DIR, RUN_RESUME, RUN_OVERRIDES = "config-file", "run-dir", "resume", "overrides"


def from_flower_run_config(run_config: Mapping[str, Any], root: Path) -> tuple[RunConfig, str, bool]:
    """Parse Flower's flattened run config into the run config, the run directory and the resume flag.

    Keys: ``config-file`` (relative to ``root``), ``run-dir`` ("" for a new directory), ``resume`` (continue
    ``run-dir``'s checkpoint), ``overrides`` (space-separated ``section.key=value``, shell-quoted); any other
    key, e.g. ``federation.rounds = 1`` added to pyproject, is one more override.

    Raises:
        ValueError: no ``config-file``, or any error of ``load_config``.
    """
    if RUN_CONFIG_FILE not in run_config:
        raise ValueError(f"the Flower run config needs {RUN_CONFIG_FILE!r} (see [tool.flwr.app.config])")
    path = Path(str(run_config[RUN_CONFIG_FILE]))
    overrides = shlex.split(str(run_config.get(RUN_OVERRIDES, "")))
    for key, value in run_config.items():
        if key not in (RUN_CONFIG_FILE, RUN_DIR, RUN_RESUME, RUN_OVERRIDES):
            overrides.append(f"{key}={tomli_w.dumps({'v': value})[4:].strip()}")
    config = load_config(path if path.is_absolute() else root / path, overrides)
    return config, str(run_config.get(RUN_DIR, "")), bool(run_config.get(RUN_RESUME, False))

"""Guards that keep the layers apart: each check imports a package fresh in a subprocess and lists what it
pulled in, so a stray top-level import anywhere in the package fails here, not in a user's `--help`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Import every module of the packages, then report which of the heavy frameworks got loaded.
_PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for module in pkgutil.walk_packages(getattr(package, "__path__", []), name + "."):
        importlib.import_module(module.name)
heavy = ("torch", "flwr", "peft", "transformers")
print(json.dumps(sorted(h for h in heavy if h in sys.modules)))
"""


def loaded_frameworks(*modules: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (("emulator",), "flwr"),  # the model owner's side never needs Flower
        (("strategies",), "torch"),  # the strategy handles numpy arrays and Flower records only
        (("emulator.config", "emulator.config_parse", "simulations.run_config"), "torch"),  # the config layer
        (("emulator.config", "emulator.config_parse", "simulations.run_config"), "flwr"),
        (("emulator.config", "emulator.config_parse", "simulations.run_config"), "peft"),
        # `scaleot --help` and the wire keys stay light: flwr only where a record is built or a run starts.
        (("simulations.cli", "strategies.wire", "strategies.records"), "flwr"),
        (("simulations.cli",), "torch"),
    ],
)
def test_a_package_does_not_import_a_framework_it_must_not_need(modules, forbidden):
    assert forbidden not in loaded_frameworks(*modules)

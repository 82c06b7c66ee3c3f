"""Command-line pieces shared by ``scaleot`` (``simulations.cli``) and the study scripts
(``simulations.studies.*``): argparse types that refuse a bad count when it is parsed, before anything loads,
and the one ``error:`` line bad input ends in. Torch-free, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2  # argparse's own exit code for bad usage; bad values get the same


def positive_int(text: str) -> int:
    """argparse type of a count of at least 1: argparse's error then names the option, before anything loads
    (a 0 used to fail only after the model had loaded)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type of a count where 0 means "the default" (``--test-limit 0``: the config's): a negative
    one would otherwise slice from the end (``test[:-1]``)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, least: int) -> int:
    try:
        if int(text) >= least:
            return int(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer of at least {least}")


def error_line(error: BaseException | str) -> None:
    """Write ``error: <message>`` to stderr, on one line whatever the message holds."""
    sys.stderr.write(f"error: {' '.join(str(error).split())}\n")


def unloadable_model(model: str, error: BaseException) -> str:
    """The message of a model that ``load_model`` could not load (an empty or broken directory, say), for
    ``error_line``: transformers' own message is given the model's name unless it already holds it."""
    return str(error) if model in str(error) else f"model={model!r} cannot be loaded: {error}"


def existing_file(text: str) -> str:
    """argparse type of a file to read (a config): a missing one is refused when parsed, naming the option."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return text


def output_file(text: str) -> Path:
    """argparse type of a file to write at the end (``--json``): a directory, or a path under a file, is
    refused when parsed, naming the option (it used to fail after the whole measurement had run). Missing
    directories above it are for the writer to make."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the path of a file to write")
    above = next((parent for parent in path.parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written: {above} is a file, not a directory")
    return path

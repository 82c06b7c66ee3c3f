"""Command-line pieces shared by ``scaleot`` (``simulations.cli``) and the study scripts
(``simulations.studies.*``): argparse types that refuse a bad count when it is parsed, before anything loads,
and the one ``error:`` line bad input ends in. Torch-free, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import dis
import sys
from pathlib import Path
from types import TracebackType

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


# Where the project's usage errors come from: a `raise` statement in a file of these folders of the
# repository, naming the field and the value (a library error the user caused is wrapped in one, as
# emulator.lm.models._load_given does). tests/: a test's fake stands in for one of our functions.
PROJECT_FOLDERS = ("emulator", "strategies", "clients", "simulations", "tests")
_ROOT = Path(__file__).resolve().parents[1]  # the repository, or site-packages when installed
# The instructions a `raise` statement compiles to; at any other (a call, `a + b`), what it ran raised.
_RAISE_OPCODES = frozenset(dis.opmap[name] for name in ("RAISE_VARARGS", "RERAISE"))


def is_usage_error(error: BaseException) -> bool:
    """Whether ``error`` is one of the project's own errors about its input: raised by a ``raise`` statement
    in a file of ``PROJECT_FOLDERS``. An error raised inside a library (numpy, flwr, torch, transformers), or
    by an operation of our own code (a numpy broadcast, ``int("x")``), is a bug to report instead; a bare
    ``raise`` that passes a library's error on leaves it the library's (its traceback still ends there).
    """
    frames = _frames(error)
    if not frames:  # never raised (built to be reported): it can only be ours
        return True
    last = frames[-1]
    return _ours(last) and last.tb_frame.f_code.co_code[last.tb_lasti] in _RAISE_OPCODES


def raised_where(error: BaseException) -> str:
    """``module.function`` where ``error`` was raised, and the last function of ours on the way when that
    is a library's, for an internal error's line (``numpy.x._broadcast_shape, called from strategies.y.f``).
    """
    frames = _frames(error)
    if not frames:
        return "an unknown place"
    ours = [frame for frame in frames if _ours(frame)]
    if ours and ours[-1] is not frames[-1]:
        return f"{_name(frames[-1])}, called from {_name(ours[-1])}"
    return _name(frames[-1])


def _frames(error: BaseException) -> list[TracebackType]:
    """The traceback's entries, outermost first: the last is where ``error`` was raised."""
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    return frames


def _ours(frame: TracebackType) -> bool:
    path = Path(frame.tb_frame.f_code.co_filename).resolve()
    return path.is_relative_to(_ROOT) and path.relative_to(_ROOT).parts[0] in PROJECT_FOLDERS


def _name(frame: TracebackType) -> str:
    return f"{frame.tb_frame.f_globals.get('__name__', '?')}.{frame.tb_frame.f_code.co_qualname}"


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

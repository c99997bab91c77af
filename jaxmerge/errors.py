"""User-facing errors: one named line, no traceback, a non-zero exit.

Library code raises a ``UserError`` (or a subclass: ``ConfigError``, ``CheckpointError``,
``MissingDependency`` …) whenever the cause is the user's input or environment — a bad argument, a
missing file, an unsupported config, a hub id that is not cached in offline mode. Entry points wrap
their work in ``cli_errors``: a ``UserError`` prints ``<prog>: error: <message>`` on stderr and
exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import sys


class UserError(Exception):
    """Bad input or environment; the message says what was wrong and what to do."""


class MissingDependency(UserError, ImportError):
    """An optional package is not installed; the message names the install command."""


def require(module: str, purpose: str, install: str | None = None):
    """Import ``module`` or raise ``MissingDependency`` naming ``pip install …``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name and not module.startswith(e.name.split(".")[0]):
            raise  # the module exists but one of its own imports is broken: a real error
        pkg = install or module.split(".")[0]
        raise MissingDependency(f"{purpose} needs the '{module.split('.')[0]}' package: pip install {pkg}") from None


@contextlib.contextmanager
def cli_errors(prog: str):
    """Turn a ``UserError`` raised inside the block into one line on stderr and ``SystemExit(2)``."""
    try:
        yield
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None

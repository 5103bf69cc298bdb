"""The errors mae-hub raises for bad input or a bad state, whose message is for the user.

Every module's own error derives from `MAEError`, so a caller (the `mae` command, a
script) can tell "the input was wrong, here is why" from a bug: the CLI prints an
`MAEError` as one line and lets anything else show its traceback. Each also derives from
the built-in it refines (`ValueError`, `RuntimeError`, ...), so code that caught those
keeps working.
"""

from __future__ import annotations


class MAEError(Exception):
    """A failure the user can act on; the message names the problem and the way out."""


class MAEValueError(MAEError, ValueError):
    """A value outside what is accepted: a setting, a mask ratio, a size, a name."""


class TrainingError(MAEError, RuntimeError):
    """A run that cannot start or go on (a refused resume, diverged losses, ...)."""


class MissingDependency(MAEError, RuntimeError):
    """An optional extra is not installed; the message names the pip command."""


class DecoderMissing(MAEError, RuntimeError):
    """Reconstruction was asked of a model loaded without its decoder."""


class DeviceMemoryError(MAEError, RuntimeError):
    """The device ran out of memory; the message says which setting lowers the need."""

"""The error types a user sees as one line (the CLI prints them without a traceback)."""

from __future__ import annotations


class VncompileError(Exception):
    """A failure worth one line to the user: what went wrong and, where we know it, what to do.

    ``exit_code`` follows the Unix convention the CLI uses: 2 for bad input (the
    user can fix the command), 1 for a build or verification that failed.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        # One line by construction: a multi-line message from a library is folded.
        super().__init__(" ".join(str(message).split()))


class InputError(VncompileError):
    """The command, a file or an option the user gave cannot be used."""

    exit_code = 2


class CheckpointError(InputError):
    """A checkpoint cannot be loaded safely, or is not a network vncompile knows."""


class FusionError(VncompileError):
    """Deploy fusion would not compute the same function as the trained network."""


class ExportError(VncompileError):
    """torch.onnx could not export the network."""


class TargetUnavailable(InputError):
    """The target's toolchain is not installed or has no device here."""


class VerificationError(VncompileError):
    """An artifact disagrees with the reference beyond the precision's tolerance."""


class OutputExists(InputError):
    """An output exists and differs from what we would write; ``--force`` replaces it."""


class OutputError(VncompileError):
    """An output, or the build cache, could not be written: no space, no permission, not a directory."""

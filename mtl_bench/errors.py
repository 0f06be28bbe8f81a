"""Errors that the command line turns into one line on stderr and a documented exit code."""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """Bad input from the user: unknown name, malformed option, unreadable file.

    The command line prints ``str(error)`` on one line and exits with code 2.
    """


class RunDiverged(RuntimeError):
    """A training run produced a non-finite loss; the run is recorded as failed."""

    def __init__(self, epoch: int, step: int, losses: list[float]):
        self.epoch = epoch
        self.step = step
        self.losses = losses
        super().__init__(
            f"non-finite loss at epoch {epoch} (step {step}): task losses {losses}"
        )


def check_param(ok: bool, name: str, requirement: str, value: object) -> None:
    """Raise the one fixed wording used for every invalid hyper-parameter.

    ``check_param(False, "alpha", "a non-negative float", -1)`` raises
    ``UserError("Parameter `alpha` should be a non-negative float. Found `alpha = -1`.")``.
    """
    if not ok:
        raise UserError(f"Parameter `{name}` should be {requirement}. Found `{name} = {value!r}`.")


class OutputError(UserError):
    """An output folder cannot take a file: a file in the way, no permission, disk full.

    The message names the folder and the operating system's reason, e.g. ``cannot write tables
    to 'reports/tables': No space left on device``.
    """

    def __init__(self, what: str, folder: str | Path, error: OSError):
        folder = Path(folder)
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       None)
        reason = (f"'{blocker}' is a file, not a folder" if blocker is not None
                  else error.strerror or str(error))
        super().__init__(f"cannot write {what} to '{folder}': {reason}")

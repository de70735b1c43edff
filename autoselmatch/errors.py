"""Errors a user can fix. The CLI prints them as one line and exits with ``exit_code``."""


class AutoSelMatchError(Exception):
    """Base class of every error caused by input, files or settings (not a bug)."""

    exit_code = 1


class InvalidArgument(AutoSelMatchError, ValueError):
    """A value outside its allowed range or set; the message names both."""

    exit_code = 2


class DataError(AutoSelMatchError):
    """A dataset, score file or cached artefact that is missing, corrupt or mismatched."""

    exit_code = 2


class TrainingDiverged(AutoSelMatchError):
    """Training produced a non-finite loss (or a negative learned lr) and was stopped."""

    exit_code = 1

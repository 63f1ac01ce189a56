"""The errors a user can cause and fix: the CLI prints each as one line and exits non-zero."""


class AblateError(Exception):
    """A mistake the user can fix: the CLI prints it as one line and exits with `code`."""

    code = 2


class StudyError(AblateError):
    """A study file or Study value that cannot run: a key, level, factor or claim is wrong."""

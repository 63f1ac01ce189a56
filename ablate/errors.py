"""The errors a user can cause and fix: the CLI prints each as one line and exits non-zero."""

from __future__ import annotations

import functools
from collections.abc import Callable


class AblateError(Exception):
    """A mistake the user can fix: the CLI prints it as one line and exits with `code`."""

    code = 2


class StudyError(AblateError):
    """A study file or Study value that cannot run: a key, level, factor or claim is wrong."""


class StoreError(AblateError):
    """A results folder that cannot be read or written as asked (exit 1; 2: a usage mistake)."""

    def __init__(self, message: str, code: int = 1):  # 2: a usage mistake (another --out)
        super().__init__(message)
        self.code = code


def on_user_error(handle: Callable[[AblateError], object]):
    """A decorator: an AblateError the function raises goes to handle(error), which raises (the
    CLI's one line and exit code, the notebook API's short traceback)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except AblateError as error:
                return handle(error)

        return wrapper

    return decorate

"""Reading a study file, and the --set and --seeds a run applies to it: every failure one line."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import linecache
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from .errors import AblateError, StudyError
from .keys import MAX_SET
from .study import Study, check_claims, claim_problems, validate


def parse_set(item: str) -> tuple[str, Any]:
    """`key=value` with value a Python literal; a bare word is taken as a string."""
    key, eq, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not eq or not key:
        raise StudyError(f"--set {item!r}: expected key=value, e.g. --set lr=0.1")
    if len(text) > MAX_SET:
        raise StudyError(
            f"--set {key}: the value is {len(text):,} characters long; at most {MAX_SET:,}"
        )
    try:
        return key, ast.literal_eval(text)
    except (MemoryError, RecursionError):
        raise StudyError(f"--set {key}: the value is nested too deeply to parse") from None
    except (ValueError, SyntaxError, TypeError):  # TypeError: {[1]: 2}, an unhashable key
        if re.fullmatch(r"[A-Za-z_][\w-]*", text):
            return key, text
        raise StudyError(
            f"--set {item!r}: the value {text!r} does not parse as a Python literal"
        ) from None


def override(study: Study, sets: list[str] = (), seeds: int | None = None) -> Study:
    """Apply `--set` and `--seeds`; setting a factor pins it to that one level."""
    base, factors = dict(study.base), dict(study.factors)
    for item in sets:
        key, value = parse_set(item)
        base[key] = value
        if key in factors:
            factors[key] = [value]
    seeds = study.seeds if seeds is None else seeds
    return validate(replace(study, base=base, factors=factors, seeds=seeds))


def prepare(
    study: Study | str | Path, sets=(), seeds: int | None = None, warn=print, named="--set"
) -> Study:
    """A study file (or a Study) with --set and --seeds applied, as `ablate run` and ablate.run
    take it; what they leave doubtful goes to `warn`, where `named` is how the caller's sets are
    called: a claim a set strands, a fractional design of three factors."""
    study = override(study if isinstance(study, Study) else load(study), sets, seeds)
    for problem in claim_problems(study):  # after --set: say so, the quick look goes on
        warn(f"{problem}; after {named} the report leaves this claim out")
    if study.design == "fractional" and sum(len(v) == 2 for v in study.factors.values()) == 3:
        warn(
            f"{study.source}: a fractional design of three factors aliases each main effect with "
            "the other two's interaction (A reads A - BC); four or more factors keep main effects "
            "clear of two-factor ones"
        )
    return study


class _Exited(BaseException):
    """os._exit called by a study file while it loads: the process would end at once, with the
    file's status and no output (exit 0 read as success with nothing trained)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


@contextlib.contextmanager
def _no_hard_exit():
    """os._exit raises _Exited while a study file runs, instead of ending the process; put back
    after, as worker processes end by it. posix._exit, called directly, is not seen."""

    def refuse(code):
        raise _Exited(code)

    real, os._exit = os._exit, refuse
    try:
        yield
    finally:
        os._exit = real


def load(path: str | Path) -> Study:
    """Execute a study file and return its validated `study`; every failure one StudyError line."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file")
    code = _compile(path)
    spec = importlib.util.spec_from_loader(f"ablate_study_{path.stem}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[spec.name] = module  # so dataclasses and pickling inside the file work
    try:
        with _no_hard_exit():
            exec(code, module.__dict__)
    except AblateError:
        raise
    except (SystemExit, _Exited) as e:  # exit 0 with nothing trained would pass a CI job
        line = _user_line(e, str(path))
        called = f"SystemExit({e.code!r})" if isinstance(e, SystemExit) else f"os._exit({e.code})"
        raise StudyError(
            f"{path}:{line}: the study file exited ({called}) while loading; "
            "it must define `study`, not exit"
        ) from None
    except Exception as e:
        line = _user_line(e, str(path))
        raise StudyError(f"{path}:{line}: {type(e).__name__}: {e}") from None
    study = getattr(module, "study", None)
    if study is None:
        raise StudyError(f"{path}: defines no `study`; expected `study = Study(...)`")
    if not isinstance(study, Study):
        raise StudyError(f"{path}: `study` is a {type(study).__name__}; expected an ablate.Study")
    study.source = str(path)
    study = validate(study)
    check_claims(study)
    return study


def _compile(path: Path):
    """The file's code, its bytes decoded as Python decodes them (a BOM, a coding line, else UTF-8).
    The text it ran goes to linecache, so inspect.getsource finds a model callable's source even
    after the file is edited (mtime None: linecache.checkcache keeps the entry)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StudyError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        code = compile(data, str(path), "exec")
    except SyntaxError as e:
        where = f"{path}:{e.lineno}" if e.lineno else str(path)
        if "codec" in e.msg or "encoding" in e.msg:
            raise StudyError(f"{where}: cannot decode it: {e.msg}; save it as UTF-8") from None
        raise StudyError(f"{where}: syntax error: {e.msg}") from None
    except ValueError as e:  # null bytes, on Python 3.11
        raise StudyError(f"{path}: syntax error: {e}") from None
    text = importlib.util.decode_source(data)
    linecache.cache[str(path)] = (len(text), None, text.splitlines(keepends=True), str(path))
    return code


def _user_line(exc: BaseException, filename: str) -> str:
    tb, line = exc.__traceback__, "?"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = str(tb.tb_lineno)
        tb = tb.tb_next
    return line

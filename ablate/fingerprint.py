"""A model callable's fingerprint: a stable name from its syntax tree and plain-literal state."""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
import json
import textwrap


class NoStableId(ValueError):
    """The callable has no source or holds state whose repr differs between runs."""


def name(model, where: str = "model") -> str:
    """callable:<qualname>@<12 hex digits of sha256 of its syntax tree and literal state>;
    docstrings, comments and formatting do not count. NoStableId, naming `where`, when there is
    none."""
    qualname, blob = _identity(model, where)
    return f"callable:{qualname}@{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=list)


def _identity(obj, where: str) -> tuple[str, str]:
    """A readable name and a text that changes with the callable's code and plain-literal state."""
    if isinstance(obj, functools.partial):
        name, blob = _identity(obj.func, where)
        args = [*obj.args, *sorted(obj.keywords.items())]
        if not _literal(args):
            raise NoStableId(
                f"{where}: the partial of {name} has an argument that is not a plain literal "
                "(numbers, strings, tuples, lists, dicts of them), so its cells get no stable "
                "id; use a function defined with def"
            )
        return f"partial({name})", _json([blob, repr(args)])
    if inspect.ismethod(obj):
        name, blob = _identity(obj.__func__, where)
        return name, _json([blob, _state(obj.__self__, where)])
    if inspect.isclass(obj) or inspect.isfunction(obj):
        closure = [c.cell_contents for c in getattr(obj, "__closure__", None) or () if _filled(c)]
        literals = [v for v in closure if _literal(v)]  # make(64)'s inner function: 64 is in the id
        return obj.__qualname__, _json([_source(obj, where), repr(literals)])
    if callable(obj) and not inspect.isroutine(obj):  # an instance of a class with __call__
        name, blob = _identity(type(obj), where)
        return name, _json([blob, _state(obj, where)])
    raise NoStableId(
        f"{where}: {obj!r} has no source for a stable cell id; use a function defined with def"
    )


def _source(fn, where: str) -> list:
    """fn's syntax tree, without docstrings; a lambda's: every lambda on its first line."""
    try:
        if fn.__name__ == "<lambda>":
            lines, line = inspect.findsource(fn)[0], fn.__code__.co_firstlineno
            tree = ast.Module(
                [
                    n
                    for n in ast.walk(ast.parse("".join(lines)))
                    if isinstance(n, ast.Lambda) and n.lineno == line
                ],
                [],
            )
        else:
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError) as e:
        raise NoStableId(
            f"{where}: cannot read the source of {fn.__qualname__} ({e}), so its cells get no "
            "stable id; define it with def in a file"
        ) from None
    for node in ast.walk(tree):  # a docstring, like a comment, is not the model
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return _tree(tree)


def _tree(node):
    """An AST as nested lists without positions; None and [] fields are left out, as their set grows
    between Python versions (3.12 added FunctionDef.type_params) and ast.dump's output with it."""
    if isinstance(node, ast.AST):
        fields = ([f, _tree(v)] for f, v in ast.iter_fields(node) if v is not None and v != [])
        return [type(node).__name__, *fields]
    if isinstance(node, list):
        return [_tree(v) for v in node]
    return repr(node)


def _state(obj, where: str) -> str:
    """The attributes of a callable instance, which its class's source cannot show."""
    attrs = getattr(obj, "__dict__", None)
    if attrs is None or not _literal(attrs):
        raise NoStableId(
            f"{where}: {type(obj).__qualname__} instance holds attributes that are not plain "
            "literals, so its cells get no stable id; use a function defined with def"
        )
    return repr(sorted(attrs.items()))


def _filled(cell) -> bool:
    try:
        _ = cell.cell_contents
    except ValueError:  # a closure variable not yet assigned
        return False
    return True


def _literal(v) -> bool:
    """Numbers, strings, None and tuples, lists and dicts of them: their repr is the same in every
    run."""
    if v is None or type(v) in (bool, int, float, complex, str, bytes):
        return True
    if type(v) in (tuple, list):
        return all(_literal(x) for x in v)
    return type(v) is dict and all(_literal(k) and _literal(x) for k, x in v.items())

"""The house's rules, read from the code: imports run one way and name the defining module."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "ablate"


def trees() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def defined(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level (under an if or try too), imports aside."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def ablate_imports(module: str, tree: ast.Module):
    """(line, imported module, names) for every import of an ablate module, lazy ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                yield node.lineno, node.module, [a.name for a in node.names]
            elif node.level == 1:  # from . import x
                yield from ((node.lineno, a.name, []) for a in node.names)
            elif (node.module or "").startswith("ablate."):
                yield node.lineno, node.module.split(".")[1], [a.name for a in node.names]
            elif node.module == "ablate":
                yield from ((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ablate."):
                    yield node.lineno, alias.name.split(".")[1], []


def graph() -> dict[str, set[str]]:
    modules = trees()
    return {
        m: {target for _, target, _ in ablate_imports(m, t) if target in modules and target != m}
        for m, t in modules.items()
        if m != "__init__"
    }


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_no_module_of_ablate_takes_part_in_an_import_circle_lazy_imports_included():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_circle_finder_finds_a_planted_circle_and_passes_a_line():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_every_name_is_imported_from_the_module_that_defines_it():
    modules = trees()
    definitions = {m: defined(t) for m, t in modules.items()}
    wrong = []
    for path in [*PACKAGE.glob("*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py")]:
        tree = ast.parse(path.read_text(), str(path))
        for line, target, names in ablate_imports(path.stem, tree):
            for name in names:
                if target in modules and name not in modules and name not in definitions[target]:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} {name} from {target}")
    assert not wrong, "names imported from a module that does not define them: " + ", ".join(wrong)


def test_no_module_imports_another_modules_private_name():
    private = [
        f"ablate/{m}.py:{line} {name} from {target}"
        for m, tree in trees().items()
        for line, target, names in ablate_imports(m, tree)
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, "private names taken across modules: " + ", ".join(private)


def test_every_module_opens_with_a_one_line_sentence_of_its_purpose():
    missing = [
        m
        for m, tree in trees().items()
        if not (doc := ast.get_docstring(tree)) or not doc.splitlines()[0].endswith(".")
    ]
    assert not missing, f"modules without a one-line docstring sentence: {missing}"


def test_the_readme_opens_with_the_two_commands_and_ci_runs_the_second_within_300_lines():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 300, f"README.md has {len(readme)} lines; the front door keeps to 300"
    fence = readme.index("```bash")
    run_study, run_tests = readme[fence + 1 : fence + 3]
    assert fence < 5 and readme[fence + 3] == "```", readme[: fence + 4]
    assert "ablate run studies/" in run_study and "ablate report" in run_study, run_study
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1].endswith(run_tests), f".ci/run runs {ci[-1]!r}; the README says {run_tests!r}"


def test_the_readmes_study_file_is_studies_mnist_mlp_py_verbatim():
    study = (ROOT / "studies" / "mnist_mlp.py").read_text()
    assert f"```python\n{study}```" in (ROOT / "README.md").read_text()

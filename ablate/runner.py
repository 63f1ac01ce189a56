"""Expand a study, skip finished cells, form groups, train them, store each group as it ends."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import platform
import signal
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from . import __version__, engine, fused
from . import data as datasets
from .cluster import Pool
from .design import Design, design_ids
from .errors import AblateError, StoreError, StudyError
from .executor import Executor, Outcome, Progress, RunOptions, Summary
from .keys import DATASET_SIZES, key_spec
from .local import Local
from .readback import ROW_COLUMNS, parquet_files, read_manifest
from .sources import Data, check_flips
from .store import Store, check_folder
from .study import Cell, Study, model_name, own_values
from .study import cells as expand


class Stopped(Exception):
    """The user interrupted the run (Ctrl-C, SIGTERM, SIGHUP); finished cells are stored."""

    def __init__(self, done: int, total: int, signum: int = signal.SIGINT):
        super().__init__(f"stopped: {done} of {total} cells done; run the same command to finish")
        self.done, self.total, self.signum = done, total, int(signum)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT, SIGTERM and SIGHUP stop a run alike: the first raises KeyboardInterrupt where the
    run is, and the signals that follow are ignored while it stores what finished (a second
    Ctrl-C printed a traceback from the clean-up). Yields the list the first signal lands in.
    A signal this process was started ignoring (nohup, a background job) stays ignored."""
    got, previous = [], {}

    def stop(signum, frame):
        if not got:
            got.append(signum)
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, stop)
    try:
        yield got
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not got:
            got.append(signal.SIGINT)  # a KeyboardInterrupt raised another way: Ctrl-C


# the class each executor.KINDS name builds, from the study and the RunOptions
EXECUTORS: dict[str, type[Executor]] = {"local": Local, "ray": Pool}


def results_dir(study: Study, out: str | Path) -> Path:
    """OUT/<name>/, refused when it is a folder ablate did not make (store.check_folder) or one
    whose cells were trained under another default of an own key (check_defaults)."""
    path = Path(out) / study.name
    check_folder(path)
    check_defaults(study, path)
    return path


def check_defaults(study: Study, path: Path) -> None:
    """An own key enters a cell's id only away from its default (so that adding a key keeps the
    stored cells): with the default changed, a cell at the new default would take the id of one
    trained at the old, and reruns reused or swapped cells. Refused while the folder holds cells
    trained when the manifest recorded another default."""
    recorded = read_manifest(path).get("keys")
    for name, key in study.keys.items() if isinstance(recorded, dict) else ():
        spec = recorded.get(name)
        if not isinstance(spec, dict) or "default" not in spec:
            continue  # a key added since: its default is the old cells' value
        old, new = spec["default"], json.loads(json.dumps(key.default))  # tuples as lists
        if json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True):
            continue
        if not finished(path):
            return
        raise StudyError(
            f"{study.source}: own key '{name}' has default {key.default!r}, but the cells in "
            f"{path} were trained when it was {old!r}; a cell at the new default would reuse "
            f"one trained at the old: keep the default {old!r} (set {name} in base instead), "
            "or run into another --out"
        )


def finished(path: Path) -> set[str]:
    """Cell ids already stored, read without the lock (files are complete or absent)."""
    ids = set()
    for f in parquet_files(path) if path.is_dir() else []:
        try:
            ids.update(pq.read_table(f, columns=["cell"]).column("cell").to_pylist())
        except Exception:  # the locked pass in Store.done() names and moves such files
            pass
    return ids


def groups(todo: list[Cell], max_group: int, device=None, model="mlp") -> list[list[Cell]]:
    """The cells of each shape in as few groups of at most max_group as can be, their sizes as
    even as can be: 10 cells at 8 train as 5 + 5, not 8 + 2 (the cells of a small group each
    pay more of its per-step overhead). On a GPU an MLP's shape ignores fused.SELECTED_KEYS."""
    by_key: dict[str, list[Cell]] = {}
    for c in todo:
        by_key.setdefault(fused.shape_key(c, device, model), []).append(c)
    chunks = []
    for cells in by_key.values():
        parts = -(-len(cells) // max_group)
        bounds = [len(cells) * k // parts for k in range(parts + 1)]
        chunks += [cells[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return chunks


def file_name(group: list[Cell]) -> str:
    """A cell's id, or for a group a hash of its members' ids."""
    if len(group) == 1:
        return group[0].id
    return "g" + hashlib.sha256(" ".join(c.id for c in group).encode()).hexdigest()[:16]


def rows_for(study: Study, cell: Cell, epochs: list[dict]) -> list[dict]:
    """The tidy schema: study, cell, seed, a column per factor, the epoch's metrics, config JSON."""
    config = json.dumps(cell.config, sort_keys=True, default=list)
    levels = {k: list(v) if isinstance(v, tuple) else v for k, v in cell.levels.items()}
    return [
        {
            "study": study.name,
            "cell": cell.id,
            "seed": cell.seed,
            **levels,
            **{k: r[k] for k in ROW_COLUMNS},
            "config": config,
            **({"stream": cell.stream} if cell.stream else {}),  # after epoch: not a factor
        }
        for r in epochs
    ]


def manifest(
    study: Study,
    old: dict,
    machine: str | None,
    deterministic: bool = False,
    sizes=None,
    rule: dict | None = None,
) -> dict:
    """The study as run (design, claims, source text) and every run's details, this one on
    `machine` (the executor's label); without it, no new run. `rule`: --until-halfwidth's
    record (seeds.until_halfwidth), else the one already there."""
    rule = rule or old.get("until_halfwidth")
    # no data loaded (nothing to train): the sizes and fingerprints recorded stand
    sizes = sizes or {k: old[k] for k in ("classes", "test_size", "data_sha256") if k in old}
    text = Path(study.source).read_text() if Path(study.source).is_file() else ""
    run = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ablate": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": machine,
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        "deterministic": deterministic,
        "argv": sys.argv,
    }
    out = {
        "study": study.name,
        "dataset": model_name(study.dataset),
        "model": model_name(study.model),
        "design": study.design,
        "base": study.base,
        "factors": study.factors,
        "factor_order": list(study.factors),  # the JSON is written with sorted keys
        "seeds": study.seeds,
        "source": {
            "path": study.source,
            "abspath": str(_where(study.source)),
            "text": text,
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        },
        "claims": [vars(c) for c in study.claims],
        **({"keys": {k: key_spec(key) for k, key in study.keys.items()}} if study.keys else {}),
        # classes and test images, for chance and the accuracy step, where ablate does not know
        # the dataset's (DATASET_SIZES): a dataset callable or a torchvision one
        **(sizes if sizes and study.dataset not in DATASET_SIZES else {}),
        "runs": old.get("runs", []) + ([run] if machine else []),
        **({"until_halfwidth": rule} if rule else {}),
    }
    return json.loads(
        json.dumps(out, sort_keys=True, default=str)
    )  # as read back: tuples are lists


def check_owner(study: Study, path: Path, cells: list[Cell]) -> None:
    """Two study files of one name would share a folder, the second replacing the first's
    manifest (its source, claims, even dataset): refuse, unless both describe the same cells."""
    old = read_manifest(path)
    source = old.get("source") or {}
    # manifests before 0.1.1 hold only the path as typed
    theirs = source.get("abspath") or source.get("path")
    if not theirs or _where(theirs) == _where(study.source):
        return
    seeds = sorted({c.seed for c in cells})
    if design_ids(old, seeds) == {c.id for c in cells}:  # the same study, moved or copied
        return
    raise AblateError(
        f"{path}: holds the results of {theirs} ({old.get('dataset')}), another study named "
        f"'{study.name}' than {study.source}; rename one or give it its own --out"
    )


def _where(source: str) -> Path:
    return Path(source).expanduser().resolve()


def refresh(study: Study, path: Path, rule: dict | None = None) -> None:
    """Nothing to train, but the study file changed (a claim, its text): record it, so the report
    shows the claims as they stand now. Skipped while another run holds the folder."""
    old = read_manifest(path)

    def same(m: dict) -> dict:  # the path it was run by does not count, nor the runs
        return {**m, "runs": None, "source": (m.get("source") or {}).get("sha256")}

    if same(manifest(study, old, None, rule=rule)) == same(old):
        return
    store = Store(path)
    try:
        store.open()
    except StoreError:
        return
    try:
        store.write_manifest(manifest(study, store.manifest(), None, rule=rule))
    finally:
        store.close()


def run(study: Study, options: RunOptions, rule: dict | None = None) -> Summary:
    """Train every cell of `study` not yet in `options.out`/<name>/, on the executor the options
    name. Raises Stopped on Ctrl-C; the store is written here only, whatever the executor.
    `rule`: what the manifest records of --until-halfwidth (seeds.until_halfwidth)."""
    # the name, once; whether this machine (or the Ray cluster) has it is checked by the executor
    if isinstance(options.device, str):
        options = replace(options, device=engine.parse_device(options.device))
    progress = options.progress
    path, started = results_dir(study, options.out), time.perf_counter()
    cells = expand(study)
    check_owner(study, path, cells)
    if not (todo := [c for c in cells if c.id not in finished(path)]):
        refresh(study, path, rule)
        return Summary(len(cells), len(cells))
    pool = _start(study, todo, options)
    store = Store(path, warn=progress.warn)
    with stop_on_signals() as got:  # after ray.init: its C++ handler would dump and exit 1
        try:
            machine = pool.label()
            todo = _open(store, study, cells, pool, options.deterministic, rule)
            if not todo:  # another run stored the rest between `finished` and the lock
                return Summary(len(cells), len(cells))
            pool.predictions = options.predictions and _predicting(store, pool.data, progress)
            summary = Summary(len(cells), len(cells) - len(todo))
            max_group = options.max_group or pool.auto_group(todo)
            progress.start(len(cells), len(todo), f"{machine}, groups of up to {max_group}")
            for group in reversed(groups(todo, max_group, pool.device, study.model)):
                pool.submit(group)
            try:
                while pool:
                    _finish(study, store, summary, progress, pool, pool.next())
            except KeyboardInterrupt:
                for outcome in pool.drain():
                    _finish(study, store, summary, progress, pool, outcome)
                # counted from the files: the signal may land mid-_finish
                stored = len(finished(path) & {c.id for c in cells})
                raise Stopped(stored, len(cells), got[0] if got else signal.SIGINT) from None
            summary.seconds = time.perf_counter() - started
            return summary
        finally:
            try:
                pool.close()
            finally:
                store.close()


def _start(study: Study, todo: list[Cell], options: RunOptions) -> Executor:
    """The executor, with each shape's model checked on it; either fails before anything is
    written (a missing dataset, no GPU, no Ray, a model that does not fit the data)."""
    pool = EXECUTORS[options.executor](study, options)
    try:
        check_flips(pool.data, [c.config for c in todo], study.source)
        pool.check(todo)
    except BaseException:
        pool.close()
        raise
    return pool


def _open(
    store: Store, study: Study, cells: list[Cell], pool: Executor, deterministic, rule
) -> list:
    """Lock the folder and record this run in its manifest; the cells still to train, as another
    run may have stored some since `finished` looked."""
    store.open()
    done = store.done()
    sizes = {"classes": pool.data.classes, "test_size": len(pool.data.test_y)}
    old = store.manifest()
    if callable(study.dataset):
        sizes["data_sha256"] = _same_data(study, store.path, old, pool.data, done)
    record = manifest(study, old, pool.label(), deterministic, sizes, rule)
    store.write_manifest(record)
    store.fill_columns(list(study.factors), Design.from_manifest(record).json_defaults)
    return [c for c in cells if c.id not in done]


MAX_PREDICTED = 1_000_000  # test examples: past this a run stores no predictions (2 MB a cell)


def _predicting(store: Store, data: Data, progress: Progress) -> bool:
    """Whether this run stores test predictions, with labels.parquet written or found the same:
    not past MAX_PREDICTED examples nor int16's classes, where it says so once."""
    n, problem = len(data.test_y), ""
    if n > MAX_PREDICTED:
        problem = f"the test set has {n:,} examples (over {MAX_PREDICTED:,})"
    elif data.classes > np.iinfo(np.int16).max + 1:
        problem = f"the dataset has {data.classes:,} classes (int16 holds 32,768)"
    if problem:
        progress.warn(f"{problem}: this run stores no per-example test predictions")
        return False
    problem = store.write_labels(data.test_y.cpu().numpy())
    if problem:
        progress.warn(problem)
    return not problem


def _same_data(study: Study, path: Path, old: dict, data: Data, done: set) -> dict:
    """The manifest's data_sha256 with this run's entry: per setting of the study's own keys at
    its base, the fingerprint of what the dataset callable returned (datasets.fingerprint). A
    callable's id hashes its source, not the file it reads: when that file changed, its stored
    cells were reused and the manifest's classes and test size rewritten. Refused while cells
    trained on other data are stored."""
    recorded = old.get("data_sha256") if isinstance(old.get("data_sha256"), dict) else {}
    setting = json.dumps(own_values(study, study.base), sort_keys=True, default=list)
    new = datasets.fingerprint(data)
    if done and recorded.get(setting, new) != new:
        sizes = [
            f"{what} {old.get(key)} -> {now}"
            for what, key, now in (
                ("classes", "classes", data.classes),
                ("test rows", "test_size", len(data.test_y)),
            )
            if old.get(key) != now
        ]
        raise StudyError(
            f"{study.source}: dataset {model_name(study.dataset)} returned other data than the "
            f"cells in {path} were trained on ({', '.join(sizes) or 'same sizes, other values'}); "
            "its source is unchanged, so they would be reused: run into another --out, or edit "
            "the callable (its cells get new ids)"
        )
    return {**recorded, setting: new}


def _finish(study, store, summary, progress, pool: Executor, outcome: Outcome) -> None:
    """Store a trained group; split one that ran out of memory; record one that failed."""
    group, error = outcome.group, outcome.error
    if outcome.out_of_memory and len(group) == 1:  # cells of other shapes may fit
        error = f"cell {group[0].id} alone does not fit in {pool.memory()} memory"
    elif outcome.out_of_memory:
        half = len(group) // 2
        progress.warn(
            f"a group of {len(group)} cells ran out of {pool.memory()} memory; "
            f"retrying as {half} + {len(group) - half}"
        )
        pool.submit(group[half:])
        pool.submit(group[:half])
        return
    if error is not None:
        summary.failed += [c.id for c in group]
        progress.warn(f"a group of {len(group)} cells failed and stays untrained: {error}")
        return
    predicted = outcome.predictions or {}  # the ok cells', where the run keeps them
    if cells := [c.id for c in group if c.id in predicted]:
        # before the rows: killed between the two, the group is untrained and trains again
        final = {c.id: e[-1]["epoch"] for c, e in zip(group, outcome.rows, strict=True)}
        epochs = [final[c] for c in cells]
        store.write_predictions(file_name(group), cells, epochs, [predicted[c] for c in cells])
    # one file per group: a group is stored whole or not at all, so a rerun after a
    # crash forms the same groups and repeats the same numbers bitwise
    store.write(
        [r for c, e in zip(group, outcome.rows, strict=True) for r in rows_for(study, c, e)],
        file_name(group),
        study.factors,
    )
    for cell, epochs in zip(group, outcome.rows, strict=True):
        summary.trained += 1
        if epochs[-1]["status"] == "diverged":
            summary.diverged.append(cell.id)
        progress.cell_done(cell, epochs)

"""The results directory: one Parquet file per finished cell or group, written atomically.

Layout of results/<study>/:
  <name>.parquet   rows of finished cells; every file is complete or absent
  _manifest.json   study source and hash, claims, versions, devices of every run
  _files.json      the Parquet files this folder's runs wrote, each with its size and sha256
  _quarantine/     unreadable or foreign Parquet files moved aside
  _predictions/    each ok cell's argmax class per test example at its final epoch: a file per
                   rows file, of the same name (cell, epoch, predicted list<int16>), written
                   before it, and labels.parquet (label int16, in test-set order); ablate's own,
                   like _quarantine: a rerun of a group killed before its rows rewrites its file
  .lock            held by the run writing here (flock: a dead process holds nothing)
Names beginning with "_" or "." are skipped by pyarrow's and DuckDB's readers, so
`pandas.read_parquet("results/<study>")` sees the rows alone. This module writes the folder;
readback.py reads it back (rows, manifest, record) and predictions.py its test predictions.

A results folder may come from someone else: nothing in it is trusted. ablate never reads,
writes, moves or deletes through a symbolic link among the names above (check_links), and the
lists it reads from a folder (_files.json, a report's .ablate-report) are only ever compared
with the files there, never joined into a path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import testhooks
from .errors import StoreError
from .keys import JSON_DEFAULTS
from .predictions import LABELS, PREDICTIONS, read_labels
from .readback import (
    MANIFEST,
    QUARANTINE,
    RECORD,
    clash_line,
    in_trust_order,
    is_ours,
    parquet_files,
    read_manifest,
    refuse_link,
    row_configs,
    same_rows,
    schema_problem,
    sha256,
    written,
)

LOCK = ".lock"
OWN = (MANIFEST, RECORD, QUARANTINE, PREDICTIONS, LOCK)  # what a run writes (a report: report.py)


def check_links(folder: Path) -> None:
    """refuse_link for every name ablate reads or writes in a results folder: its own files
    (OWN), its Parquet files and its temp files, and those in PREDICTIONS."""
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        if name in OWN or name.endswith(".parquet") or _temporary(name):
            refuse_link(folder / name)
    inner = folder / PREDICTIONS
    for name in sorted(os.listdir(inner)) if inner.is_dir() else []:
        if name.endswith(".parquet") or _temporary(name):
            refuse_link(inner / name)


def atomic_write(path: Path, write: Callable, kind: str = "file") -> None:
    """write(f) into a hidden temp file beside `path`, fsync, rename over `path`, fsync the folder:
    a crash at any point leaves the old file or the new one, never a part. A link at `path` is
    refused and one at the temp name fails (O_NOFOLLOW): nothing is written through either."""
    refuse_link(path)
    testhooks.count_write(kind)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(tmp, flags, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, or Ctrl-C mid-write: no part left behind
        tmp.unlink(missing_ok=True)
        raise
    testhooks.kill_at(kind, "written")
    os.replace(tmp, path)
    testhooks.kill_at(kind, "renamed")
    folder = os.open(path.parent, os.O_RDONLY)  # the rename reaches the disk with the folder
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _temporary(name: str) -> bool:  # .<name>.tmp-<pid>: atomic_write's or report.write_folder's
    return name.startswith(".") and ".tmp-" in name


TEMPORARY = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)(-[^/]*)?")


def clear_temporaries(folder: Path, name: str | None = None) -> None:
    """Delete the temp files and folders a killed ablate left in `folder` (.<name>.tmp-<pid>,
    a report's .<name>.tmp-<pid>-<random>/) whose process is gone; `name`: only that name's.
    A link is left alone: it is no temp file of ablate's, and rmtree would not follow it."""
    for entry in sorted(os.listdir(folder)) if folder.is_dir() else []:
        match = TEMPORARY.fullmatch(entry)
        if not match or (name is not None and match["name"] != name) or _alive(match["pid"]):
            continue
        info = os.lstat(folder / entry)
        if stat.S_ISDIR(info.st_mode):
            shutil.rmtree(folder / entry, ignore_errors=True)
        elif stat.S_ISREG(info.st_mode):
            (folder / entry).unlink(missing_ok=True)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_folder(path: Path) -> None:
    """Refuse to write results into a folder ablate did not make: one that holds anything but
    a manifest's company (a killed first run leaves at most its .lock and temp files), or
    one inside another study's results folder. Opening a store moves foreign Parquet files
    aside and deletes temp files, which must never happen to a user's own folder."""
    refuse_link(path)  # OUT/<name> elsewhere: ablate writes in the folder it was given only
    if (path.parent / MANIFEST).is_file():
        raise StoreError(
            f"{path.parent}: is a study's results folder; results of another study do not go "
            "inside it: choose another --out",
            code=2,
        )
    if not path.exists():
        return
    if not path.is_dir():
        raise StoreError(
            f"{path}: exists and is not a folder; choose another --out or study name", code=2
        )
    check_links(path)
    if (path / MANIFEST).is_file():
        return
    foreign = [p.name for p in path.iterdir() if p.name != LOCK and not _temporary(p.name)]
    if foreign:
        raise StoreError(
            f"{path}: holds files ablate did not write ({', '.join(sorted(foreign)[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}) and no {MANIFEST}; choose another --out "
            "or study name",
            code=2,
        )


class Store:
    """A results directory owned by one writer at a time."""

    def __init__(self, path: str | Path, warn: Callable[[str], None] = print):
        self.path, self.warn, self._lock = Path(path), warn, None

    def open(self) -> Store:
        """Create the directory, take the lock, clear temp files a killed run left behind. A link
        among the names ablate writes here is refused first (check_links): a `.lock` linked to
        a user's file took the PID before."""
        refuse_link(self.path)
        check_links(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # a link made since
            self._lock = os.fdopen(os.open(self.path / LOCK, flags, 0o666), "r+")
        except OSError as e:
            raise StoreError(f"{self.path}: cannot write results here ({e.strerror})") from None
        try:
            import fcntl

            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            pid = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise StoreError(
                f"{self.path}: another ablate run (pid {pid}) is writing here; "
                "wait for it to finish or stop it"
            ) from None
        except ImportError:  # no flock on Windows: single-writer is then the user's to keep
            pass
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        clear_temporaries(self.path)  # a folder: a killed report's
        clear_temporaries(self.path / PREDICTIONS)
        return self

    def close(self) -> None:
        if self._lock:
            self._lock.close()
            self._lock = None

    def _quarantine(self, file: Path, why: str) -> None:
        """Move a file aside; a file of the same name already there is kept (a.1.parquet, ...)."""
        folder = self.path / QUARANTINE
        refuse_link(folder)  # a linked _quarantine moved files out of the folder before
        folder.mkdir(exist_ok=True)
        target, n = folder / file.name, 0
        while os.path.lexists(target):  # a dangling link there is not replaced either
            n += 1
            target = folder / f"{file.stem}.{n}{file.suffix}"
        os.replace(file, target)
        self.warn(f"{file}: {why}; moved to {target}")

    def done(self) -> set[str]:
        """Ids of the cells with rows here. Unreadable or foreign files are moved aside, never
        merged, and so is a file holding a cell another holds with other values (an identical copy
        is harmless: reading counts it once): of two, the one this folder's runs wrote (RECORD)
        stays. Only the cell column is parsed unless a cell repeats."""
        ids, first = set(), {}
        for f in in_trust_order(self.path):
            try:
                if problem := schema_problem(pq.read_schema(f)):
                    self._quarantine(f, problem)
                    continue
                cells = set(pq.read_table(f, columns=["cell"]).column("cell").to_pylist())
                rows = lambda file: pq.read_table(file).to_pandas()  # noqa: E731
                clash = [
                    c for c in cells if c in first and not same_rows(rows(first[c]), rows(f), c)
                ]
            except (pa.ArrowException, OSError) as e:
                self._quarantine(f, f"unreadable Parquet ({str(e).splitlines()[0][:80]})")
                continue
            if clash:
                self._quarantine(f, clash_line(f, first[clash[0]], clash[0], self.path))
                continue
            first.update({c: f for c in cells if c not in first})
            ids.update(cells)
        return ids

    def fill_columns(self, factors: list[str], defaults: dict = JSON_DEFAULTS) -> None:
        """A column per factor in every file, read from each row's config: readers take one
        file's schema for the folder (pyarrow, pandas, DuckDB), so a factor added later would
        vanish and pool its levels. Each file is rewritten atomically, under the lock."""
        record = written(self.path)
        for f in parquet_files(self.path):
            if missing := [x for x in factors if x not in pq.read_schema(f).names]:
                ours = is_ours(f, record)
                table = pq.read_table(f).to_pandas()
                config = row_configs(table["config"], defaults)
                for x in missing:
                    table[x] = config.map(lambda c, x=x: c.get(x))
                head = ["study", "cell", "seed", *factors]
                table = table[head + [c for c in table.columns if c not in head]]
                arrow = pa.Table.from_pandas(table, preserve_index=False)
                atomic_write(f, lambda out, arrow=arrow: pq.write_table(arrow, out), "rewrite")
                if ours:  # still this folder's own file, with its new hash
                    self._record(f)

    def write(self, rows: list[dict], name: str, factors: dict | None = None) -> Path:
        """One finished cell or group's rows as <name>.parquet, atomically; a full disk or a
        read-only folder is one line, the cells stored before it kept. A tuple factor's column
        takes its type from the factor's levels: a group of () alone would write list<null>,
        which readers of the folder cannot cast another file's list<int64> to."""
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        for column, kind in list_types(factors or {}).items():
            at = table.schema.get_field_index(column)
            table = table.set_column(at, column, table[column].cast(kind)) if at >= 0 else table
        path = self.path / f"{name}.parquet"
        try:
            atomic_write(path, lambda f: pq.write_table(table, f), "parquet")
            self._record(path)
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot store results ({e.strerror or e}); the cells stored "
                "before are kept: free space and run the same command to go on"
            ) from None
        return path

    def write_labels(self, labels: np.ndarray) -> str:
        """PREDICTIONS/labels.parquet, the test labels predictions are scored against, written
        once: "" where it now holds `labels`, else why this run stores no predictions (it holds
        other labels or is unreadable: replacing it would mismatch the predictions stored)."""
        file = self.path / PREDICTIONS / LABELS
        if os.path.lexists(file):
            stored, problem = read_labels(file, None, None)
            if not problem and not np.array_equal(stored, labels):
                problem = f"holds other test labels than this run's dataset ({len(stored)} rows)"
            return f"{file}: {problem}; this run stores no test predictions" if problem else ""
        self._write_side(file, pa.table({"label": pa.array(labels.astype(np.int16))}), "labels")
        return ""

    def write_predictions(
        self, name: str, cells: list[str], epochs: list[int], predicted: list[np.ndarray]
    ) -> Path:
        """A group's final test predictions as PREDICTIONS/<name>.parquet, atomically: written
        before the group's rows (<name>.parquet), so that a kill between the two leaves the group
        untrained, and its rerun writes both again."""
        flat = np.concatenate(predicted).astype(np.int16)
        offsets = np.arange(len(predicted) + 1, dtype=np.int32) * (len(flat) // len(predicted))
        table = pa.table(
            {
                "cell": pa.array(cells, pa.string()),
                "epoch": pa.array(epochs, pa.int64()),
                "predicted": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
            }
        )
        file = self.path / PREDICTIONS / f"{name}.parquet"
        self._write_side(file, table, "predictions")
        return file

    def _write_side(self, file: Path, table: pa.Table, kind: str) -> None:
        """A file in PREDICTIONS, atomically, recorded in RECORD as the rows files are."""
        try:
            refuse_link(file.parent)
            file.parent.mkdir(exist_ok=True)
            atomic_write(file, lambda f: pq.write_table(table, f, compression="zstd"), kind)
            self._record(file)
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot store test predictions ({e.strerror or e}); the cells "
                "stored before are kept: free space and run the same command to go on"
            ) from None

    def _record(self, file: Path) -> None:
        """Note in RECORD that this folder's runs wrote `file`, as it is now (size and sha256):
        where two files hold one cell with other values, the one written here wins. A file in a
        subfolder is noted by its path from the folder (_predictions/<name>.parquet)."""
        record = written(self.path)
        key = file.relative_to(self.path).as_posix()
        record[key] = {"size": file.stat().st_size, "sha256": sha256(file)}
        text = json.dumps({"files": record}, indent=1, sort_keys=True).encode()
        atomic_write(self.path / RECORD, lambda f: f.write(text), "record")

    def manifest(self) -> dict:
        return read_manifest(self.path)

    def write_manifest(self, manifest: dict) -> None:
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        try:
            atomic_write(self.path / MANIFEST, lambda f: f.write(text), "manifest")
        except OSError as e:
            raise StoreError(f"{self.path}: cannot write {MANIFEST} ({e.strerror or e})") from None


def list_types(factors: dict) -> dict[str, pa.DataType]:
    """Each tuple-valued factor's Arrow list type, from the items of its levels."""
    items = {
        f: [x for v in levels if isinstance(v, (tuple, list)) for x in v]
        for f, levels in factors.items()
    }
    return {f: pa.list_(pa.array(values).type) for f, values in items.items() if values}

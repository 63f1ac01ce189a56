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
`pandas.read_parquet("results/<study>")` sees the rows alone.

A results folder may come from someone else: nothing in it is trusted. ablate never reads,
writes, moves or deletes through a symbolic link among the names above (check_links), and the
lists it reads from a folder (_files.json, a report's .ablate-report) are only ever compared
with the files there, never joined into a path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import testhooks
from .design import Design
from .errors import AblateError
from .keys import DATASET_SIZES, JSON_DEFAULTS
from .metrics import BUILT_IN, TEST_ACC

MANIFEST = "_manifest.json"
RECORD = "_files.json"
QUARANTINE = "_quarantine"
PREDICTIONS = "_predictions"
LABELS = "labels.parquet"  # in PREDICTIONS
LOCK = ".lock"
OWN = (MANIFEST, RECORD, QUARANTINE, PREDICTIONS, LOCK)  # what a run writes (a report: report.py)


class StoreError(AblateError):
    def __init__(self, message: str, code: int = 1):  # 2: a usage mistake (another --out)
        super().__init__(message)
        self.code = code


def refuse_link(path: Path) -> None:
    """One line (exit 2) where `path` is a symbolic link: ablate never writes, moves or deletes
    through one, whatever a results folder from elsewhere holds."""
    if os.path.islink(path):
        raise StoreError(
            f"{path}: is a symbolic link; ablate does not read, write, move or delete through "
            "one: put the file or folder itself there, or remove the link",
            code=2,
        )


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


def parquet_files(path: Path) -> list[Path]:
    files = Path(path).glob("*.parquet")
    return sorted(p for p in files if not p.name.startswith((".", "_")) and p.is_file())


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
                    c for c in cells if c in first and not _same_rows(rows(first[c]), rows(f), c)
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
                config = _configs(table["config"], defaults)
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
            stored, problem = _read_labels(file, None, None)
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


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST
    refuse_link(file)
    if not file.is_file():
        return {}
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, OSError, UnicodeDecodeError) as e:
        raise StoreError(f"{file}: unreadable manifest ({e})") from None
    if not isinstance(manifest, dict):
        raise StoreError(
            f"{file}: unreadable manifest (a JSON {type(manifest).__name__}, not an object); "
            "move it aside and rerun the study"
        )
    if problem := manifest_problem(manifest):
        raise StoreError(f"{file}: {problem}; move it aside and rerun the study")
    return manifest


def manifest_problem(manifest: dict) -> str:
    """What in a manifest's fields ablate cannot read (a folder from elsewhere may hold any JSON
    there), or "": the names are text, factors map names to lists of levels, each claim holds
    a number and, where it says so, a mapping and a text."""

    def real(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for name in ("study", "dataset", "model", "design"):
        if name in manifest and not isinstance(manifest[name], str):
            return f"'{name}' is {manifest[name]!r}, not a name"
    factors = manifest.get("factors")
    if factors is not None and not (
        isinstance(factors, dict) and all(isinstance(v, list) for v in factors.values())
    ):
        return "'factors' is not a mapping of each factor to its list of levels"
    claims = manifest.get("claims", [])
    for claim in claims if isinstance(claims, list) else [None]:
        ok = isinstance(claim, dict) and real(claim.get("value"))
        ok = ok and isinstance(claim.get("where", {}), dict)
        if not (ok and isinstance(claim.get("source", ""), (str, type(None)))):
            return f"a claim reads {claim!r}, not a number with where and source"
    return ""


def read_design(path: str | Path) -> Design:
    """The study a results folder's manifest records (an empty Design where there is none)."""
    return Design.from_manifest(read_manifest(path))


# per epoch, after the levels: the built-in metrics (metrics.BUILT_IN) in the schema's order
ROW_COLUMNS = ("epoch", *BUILT_IN, "status")
REQUIRED = ("study", "cell", "seed", "epoch", "status", "config")
NUMERIC = ("seed", "epoch", *BUILT_IN)


def schema_problem(schema: pa.Schema) -> str:
    """Why a Parquet file is not an ablate results file, or ""."""
    if missing := [c for c in REQUIRED if c not in schema.names]:
        return f"not an ablate results file (no '{missing[0]}' column)"
    for name in [c for c in NUMERIC if c in schema.names]:
        kind = schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            return f"not an ablate results file ('{name}' holds {kind}, not numbers)"
    return ""


def written(path: Path) -> dict:
    """RECORD's entries: {file name: {size, sha256}}; anything else in it (a folder received
    from elsewhere may hold any JSON) counts for nothing."""
    file = Path(path) / RECORD
    if os.path.islink(file) or not file.is_file():
        return {}
    try:
        files = json.loads(file.read_text()).get("files")
    except (ValueError, OSError, AttributeError):
        return {}
    return (
        {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}
    )


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_ours(file: Path, record: dict, key: str | None = None) -> bool:
    """Whether `file` is as this folder's runs wrote it (RECORD: its size and sha256); `key`: its
    name in RECORD where it is not `file.name` (a file in a subfolder)."""
    entry = record.get(key or file.name) or {}
    try:
        info = os.lstat(file)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or entry.get("size") != info.st_size:
        return False
    return entry.get("sha256") == sha256(file)


def in_trust_order(path: Path) -> list[Path]:
    """The Parquet files, those this folder's runs wrote (RECORD) first, each part by name: where
    two files hold one cell with other values, the first is kept. By name alone, a copied
    `a_other_machine.parquet` beat the folder's own group file."""
    record = written(path)
    return sorted(parquet_files(path), key=lambda f: (not is_ours(f, record), f.name))


def clash_line(later: Path, first: Path, cell: str, path: Path) -> str:
    """Why `later` is left out: it holds `cell` with other values than `first`, which wins as
    the file this folder's runs wrote (RECORD) where the other is not, else by name."""
    record = written(path)
    mine = is_ours(first, record) and not is_ours(later, record)
    return f"holds cell {cell} with other values than {first.name}" + (
        ", the file this folder's runs wrote" if mine else ""
    )


def _same_rows(first: pd.DataFrame, table: pd.DataFrame, cell: str) -> bool:
    """Whether `table` holds `cell` with the very rows the first file holding it has."""
    rows = lambda t: t[t["cell"] == cell].sort_values("epoch").reset_index(drop=True)  # noqa: E731
    a, b = rows(first), rows(table)
    return list(a.columns) == list(b.columns) and a.equals(b)


def unmeasured(rows: pd.DataFrame, where, warn=None) -> pd.DataFrame:
    """One stored file's rows without the cells marked ok that hold a NaN metric (a bug or an
    edited file), and `warn` saying so in one line naming the file and the first such cell.
    Decided where the store is read, so that report, compare and plan count alike: compare
    showed n 2/4 ("too few seeds") beside a mean of 3 values."""
    metrics = [column for column in BUILT_IN if column in rows.columns]
    if not metrics or "status" not in rows.columns:
        return rows
    bad = (rows["status"] == "ok") & rows[metrics].isna().any(axis=1)
    if not bad.any():
        return rows
    first = rows[bad].iloc[0]
    missing = next(column for column in metrics if pd.isna(first[column]))
    cells = rows.loc[bad, "cell"].unique()
    more = f" ({len(cells)} such cells)" if len(cells) > 1 else ""
    if warn is not None:
        warn(
            f"{where}: cell {first['cell']} is marked ok but its {missing} is NaN at epoch "
            f"{first['epoch']}{more}; the cell is left out of report, compare and plan alike"
        )
    return rows[~rows["cell"].isin(cells)]


def _once(frames: list[tuple[Path, pd.DataFrame]], warn) -> list[pd.DataFrame]:
    """Each cell from the first file that holds it. Copying a results file under another name (as
    merging from a second machine does) would otherwise double its seeds; copies with other
    values are named, and the next `ablate run` moves them to _quarantine."""
    seen, out, copies = {}, [], 0
    for f, table in frames:
        cells = table["cell"].unique()
        known = [c for c in cells if c in seen]
        for c in known:
            if not _same_rows(seen[c][1], table, c):
                raise StoreError(
                    f"{f}: {clash_line(f, seen[c][0], c, f.parent)}; move one of the two out "
                    f"(`ablate run` moves {f.name} to {QUARANTINE})"
                )
        copies += len(known)
        out.append(table[~table["cell"].isin(known)])
        for c in cells:
            seen.setdefault(c, (f, table))
    if copies and warn:
        warn(
            f"{copies} cells are stored twice with identical rows (a copied results file?); "
            "each counted once"
        )
    return out


def read(path: str | Path, warn: Callable[[str], None] | None = warnings.warn) -> pd.DataFrame:
    """The rows under `path` of the study's current design as one tidy frame, sorted by cell and
    epoch; columns study, cell, seed, the design's factors in order, the metrics, config."""
    path = Path(path)
    if not path.is_dir():
        raise StoreError(f"{path}: no such results directory; run `ablate run STUDY` first")
    for name in (MANIFEST, *(f.name for f in parquet_files(path))):
        refuse_link(path / name)  # what is read is the folder's own, not a file elsewhere
    files = in_trust_order(path)
    if not files:
        raise StoreError(f"{path}: holds no results (*.parquet); run `ablate run STUDY` first")
    frames = []
    for f in files:
        try:
            if problem := schema_problem(pq.read_schema(f)):
                raise StoreError(f"{f}: {problem}; move it out of {path}")
            frames.append((f, unmeasured(pq.read_table(f).to_pandas(), f, warn)))
        except (pa.ArrowException, OSError) as e:
            raise StoreError(f"{f}: unreadable Parquet ({str(e).splitlines()[0][:80]})") from None
    df = pd.concat(_once(frames, warn), ignore_index=True)
    design = read_design(path)
    df = _current(df, design, path, warn)
    if design.factors is not None:  # else an old manifest: every stored level column is a factor
        _check_factors(df, design, path)
        df = _with_factors(df, design.factors, design.json_defaults)
    return df.sort_values(["cell", "epoch"], kind="stable").reset_index(drop=True)


def _check_factors(df: pd.DataFrame, design: Design, path: Path) -> None:
    """A factor the manifest names must be somewhere in the rows: a column, or a key of their
    configs (or a key's default, for rows stored before it was added)."""
    configs = _configs(df["config"], design.json_defaults)
    for f in design.factors:
        if f not in df.columns and not any(f in c for c in configs):
            raise StoreError(
                f"{path / MANIFEST}: factor '{f}' is in none of the stored rows; move the "
                "manifest aside and rerun the study"
            )


def _with_factors(df: pd.DataFrame, factors: dict, defaults: dict) -> pd.DataFrame:
    """A column per factor after seed, in the study's order, levels as declared; others: config.
    `defaults`: each key's, for rows stored before a key was added."""
    config = _configs(df["config"], defaults)
    for f, declared in factors.items():
        # a factor added after some rows were stored: their config holds its level
        level = config.map(lambda c, f=f: c.get(f))
        stored = df[f].where(df[f].notna(), level) if f in df.columns else level
        df[f] = stored.infer_objects()
        if pd.api.types.is_float_dtype(df[f]) or pd.api.types.is_object_dtype(df[f]):
            # concatenated files made None NaN and 300 300.0: the declared levels (not .map: NaN)
            df[f] = pd.Series([_declared(v, declared) for v in df[f]], index=df.index, dtype=object)
    rest = [c for c in df.columns if c not in ("study", "cell", "seed", "config", *defaults)]
    return df[["study", "cell", "seed", *factors, *rest, "config"]]


def _configs(column: pd.Series, defaults: dict = JSON_DEFAULTS) -> pd.Series:
    """Each row's config as a dict; a key added after the row was stored reads as its default."""
    return column.map({c: {**defaults, **json.loads(c)} for c in column.unique()})


def _declared(value, levels: list):
    """The declared level a stored float stands for (NaN: None; 300.0: 300), else the value."""
    if not isinstance(value, float):
        return value
    for level in levels:
        if level is None and value != value:  # NaN
            return None
        if isinstance(level, (int, float)) and not isinstance(level, bool) and value == level:
            return level
    return value


def _current(df: pd.DataFrame, design: Design, path: Path, warn) -> pd.DataFrame:
    """The rows of the cells of the recorded design (its dataset, model, base, factors, kind; any
    seed): rows an edited study or a --set run left here would pool as extra seeds of a point."""
    ids = design.cell_ids(df["seed"].unique())
    if ids is None:  # the manifest cannot say (design.unlisted): every row is the study's
        return df
    keep = df["cell"].isin(ids)
    stale = df.loc[~keep, "cell"].nunique()
    if not keep.any():
        raise StoreError(
            f"{path}: none of its cells belong to the design in {MANIFEST}; "
            "was the study edited or run with --set? Rerun it with `ablate run`"
        )
    if stale and warn:
        warn(
            f"{path}: {stale} stored cells are not in the study's current design (an edited study "
            "or a --set run wrote here) and are left out; `--out` keeps such runs apart"
        )
    return df[keep.to_numpy()]


def read_predictions(
    path: str | Path, warn: Callable[[str], None] | None = warnings.warn, rows=None
) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The test labels (int16 [N], or None) and {cell id: int16 [N]}, each ok cell's argmax class
    per test example at its final epoch, for the cells of the study's current design that have
    them; (None, {}) for a folder from before them. `rows`: read(path), where the caller has it.
    A folder from elsewhere is untrusted: a link is refused (one line, as read does); a file
    that is not one ablate wrote, or a cell whose predictions do not score its stored final
    test_acc exactly, is left out with one line naming the file."""
    path, say = Path(path), warn or (lambda line: None)
    folder = path / PREDICTIONS
    refuse_link(folder)
    if not folder.is_dir():
        return None, {}
    files = [folder / n for n in sorted(os.listdir(folder)) if n.endswith(".parquet")]
    for f in files:
        refuse_link(f)
    classes, size = _sizes(read_manifest(path))
    labels, problem = _read_labels(folder / LABELS, classes, size)
    if problem:
        say(f"{folder / LABELS}: {problem}; the test predictions are left out")
        return None, {}
    rows = read(path, warn=None) if rows is None else rows
    final = rows.sort_values(["cell", "epoch"], kind="stable").drop_duplicates("cell", keep="last")
    final = final.set_index("cell")
    record = written(path)
    trust = lambda f: (not is_ours(f, record, f"{PREDICTIONS}/{f.name}"), f.name)  # noqa: E731
    kept, stale = {}, []
    for f in sorted((f for f in files if f.name != LABELS), key=trust):
        found, problem = _predictions_table(f, len(labels), classes)
        if problem:
            say(f"{f}: {problem}; its test predictions are left out")
            continue
        wrong = []
        for cell, epoch, predicted in found:
            if cell not in final.index:
                stale.append(f)
            elif cell not in kept and _scores(final.loc[cell], epoch, predicted, labels):
                kept[cell] = predicted
            elif cell not in kept:
                wrong.append(cell)
        if wrong:
            say(
                f"{f}: the test predictions of cell {wrong[0]} ({len(wrong)} such cells) do not "
                "score its stored final test_acc; left out"
            )
    if stale:
        say(
            f"{stale[0]}: {len(stale)} test predictions are of cells not in the study's current "
            "design (an edited study, a --set run, or rows moved aside); left out"
        )
    return labels, kept


def _sizes(manifest: dict) -> tuple[int | None, int | None]:
    """The dataset's classes and test examples: the manifest's where it records them, else
    ablate's own (DATASET_SIZES), else None."""
    classes, size = DATASET_SIZES.get(manifest.get("dataset"), (None, None))

    def count(key: str, known: int | None) -> int | None:
        value = manifest.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else known

    return count("classes", classes), count("test_size", size)


def _read_labels(file: Path, classes: int | None, size) -> tuple[np.ndarray | None, str]:
    """LABELS's column, or why it cannot be read as ablate wrote it."""
    if os.path.islink(file) or not file.is_file():
        return None, "is missing" if not os.path.lexists(file) else "is not a file"
    try:
        schema = pq.read_schema(file)
        if schema.names != ["label"] or schema.field("label").type != pa.int16():
            return None, f"not an ablate labels file (columns {_columns(schema)})"
        column = pq.read_table(file).column("label")
    except (pa.ArrowException, OSError) as e:
        return None, f"unreadable Parquet ({str(e).splitlines()[0][:80]})"
    labels = column.to_numpy() if column.null_count == 0 else None
    if labels is None or not len(labels):
        return None, "not an ablate labels file (empty, or a label is missing)"
    if isinstance(size, int) and len(labels) != size:
        return None, f"holds {len(labels)} labels, but the test set has {size}"
    if labels.min() < 0 or (classes is not None and labels.max() >= classes):
        return None, f"holds labels outside 0..{(classes or 32768) - 1}"
    return labels, ""


def _predictions_table(f: Path, n: int, classes: int | None) -> tuple[list, str]:
    """(cell, epoch, int16 [n]) per row of a predictions file, or why it is not one ablate wrote
    for these `n` labels."""
    try:
        schema = pq.read_schema(f)
        kind = schema.field("predicted").type if "predicted" in schema.names else None
        if (
            schema.names != ["cell", "epoch", "predicted"]
            or not pa.types.is_string(schema.field("cell").type)
            or schema.field("epoch").type != pa.int64()
            or not (pa.types.is_list(kind) and kind.value_type == pa.int16())
        ):
            return [], f"not an ablate predictions file (columns {_columns(schema)})"
        table = pq.read_table(f)
    except (pa.ArrowException, OSError) as e:
        return [], f"unreadable Parquet ({str(e).splitlines()[0][:80]})"
    lists = table.column("predicted").combine_chunks()
    if any(table.column(c).null_count for c in table.column_names) or lists.flatten().null_count:
        return [], "not an ablate predictions file (a value is missing)"
    lengths = pc.list_value_length(lists).to_numpy()
    if len(lengths) and (lengths != n).any():
        return [], f"holds {lengths[lengths != n][0]} predictions per cell, not {n} (the labels)"
    values = lists.flatten().to_numpy().reshape(len(lengths), n)
    if values.size and (values.min() < 0 or (classes is not None and values.max() >= classes)):
        return [], f"holds classes outside 0..{(classes or 32768) - 1}"
    cells, epochs = table.column("cell").to_pylist(), table.column("epoch").to_pylist()
    return list(zip(cells, epochs, values, strict=True)), ""


def _columns(schema: pa.Schema) -> str:
    return ", ".join(f"{field.name} {field.type}" for field in schema)


def _scores(final: pd.Series, epoch: int, predicted: np.ndarray, labels: np.ndarray) -> bool:
    """Whether predictions are the cell's stored final epoch's: ok, at that epoch, and scoring its
    test_acc exactly (count / N, as loop.evaluate computes it)."""
    hits = int(np.count_nonzero(predicted == labels))
    return (
        final["status"] == "ok"
        and final["epoch"] == epoch
        and hits / len(labels) == final.get(TEST_ACC.column)
    )

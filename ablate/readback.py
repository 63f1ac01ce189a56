"""A results folder read back as untrusted input: its manifest, its record, its rows as one frame.

The folder is store.py's (its layout is told there); this module reads what a run left there and
what anyone else put there alike. Nothing in it is trusted: a link among the names read is
refused (refuse_link), a manifest or a Parquet file ablate cannot read is one line naming the
file, and _files.json (RECORD) is only ever compared with the files there, never joined into a
path. Where two files hold one cell with other values, those this folder's runs wrote win.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .design import Design
from .errors import StoreError
from .keys import JSON_DEFAULTS
from .metrics import BUILT_IN

MANIFEST = "_manifest.json"
RECORD = "_files.json"
QUARANTINE = "_quarantine"


def refuse_link(path: Path) -> None:
    """One line (exit 2) where `path` is a symbolic link: ablate never writes, moves or deletes
    through one, whatever a results folder from elsewhere holds."""
    if os.path.islink(path):
        raise StoreError(
            f"{path}: is a symbolic link; ablate does not read, write, move or delete through "
            "one: put the file or folder itself there, or remove the link",
            code=2,
        )


def parquet_files(path: Path) -> list[Path]:
    files = Path(path).glob("*.parquet")
    return sorted(p for p in files if not p.name.startswith((".", "_")) and p.is_file())


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


def same_rows(first: pd.DataFrame, table: pd.DataFrame, cell: str) -> bool:
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
            if not same_rows(seen[c][1], table, c):
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
    configs = row_configs(df["config"], design.json_defaults)
    for f in design.factors:
        if f not in df.columns and not any(f in c for c in configs):
            raise StoreError(
                f"{path / MANIFEST}: factor '{f}' is in none of the stored rows; move the "
                "manifest aside and rerun the study"
            )


def _with_factors(df: pd.DataFrame, factors: dict, defaults: dict) -> pd.DataFrame:
    """A column per factor after seed, in the study's order, levels as declared; others: config.
    `defaults`: each key's, for rows stored before a key was added."""
    config = row_configs(df["config"], defaults)
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


def row_configs(column: pd.Series, defaults: dict = JSON_DEFAULTS) -> pd.Series:
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

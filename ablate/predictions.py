"""A results folder's test predictions read back, each kept only where it scores its cell.

_predictions/ (PREDICTIONS) holds, beside each rows file, each ok cell's argmax class per test
example at its final epoch, and labels.parquet (LABELS), the test labels they are scored
against; store.py writes them, and reading them trusts nothing a folder from elsewhere holds.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .keys import DATASET_SIZES
from .metrics import TEST_ACC
from .readback import is_ours, read, read_manifest, refuse_link, written

PREDICTIONS = "_predictions"
LABELS = "labels.parquet"  # in PREDICTIONS


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
    labels, problem = read_labels(folder / LABELS, classes, size)
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


def read_labels(file: Path, classes: int | None, size) -> tuple[np.ndarray | None, str]:
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

"""The results directory: atomic writes, crash safety, quarantine, the lock, the design filter."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ablate.errors import StoreError
from ablate.predictions import LABELS, PREDICTIONS, read_predictions
from ablate.readback import MANIFEST, QUARANTINE, parquet_files, read, sha256
from ablate.store import Store, atomic_write
from ablate.study import Study, cells, validate
from helpers import REPO

ROWS = [
    dict(
        study="s",
        cell="abc",
        seed=0,
        activation="relu",
        epoch=e,
        train_loss=1.0 / e,
        test_loss=0.5,
        test_acc=0.9,
        seconds=1.0,
        status="ok",
        config="{}",
    )
    for e in (1, 2)
]


def test_write_read_and_manifest_beside_readers_that_know_nothing_of_ablate(tmp_path):
    s = Store(tmp_path / "s").open()
    s.write(ROWS, "abc")
    s.write_manifest({"study": "s", "runs": []})
    s.close()
    df = read(tmp_path / "s")
    assert df["epoch"].tolist() == [1, 2] and df["train_loss"].tolist() == [1.0, 0.5]
    assert len(pd.read_parquet(tmp_path / "s")) == 2  # the manifest and lock are skipped by name
    duckdb = pytest.importorskip("duckdb")
    assert (
        duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/s/*.parquet')").fetchall()[0][0]
        == 2
    )
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["study"] == "s"


def test_a_write_killed_half_way_leaves_no_readable_partial_file(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    # the child writes half a file through atomic_write, then dies as kill -9 would
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from ablate.store import atomic_write
        def half(f):
            f.write(b"PAR1" + b"x" * 100000)
            f.flush()
            os.kill(os.getpid(), 9)
        atomic_write(Path({str(folder / "c.parquet")!r}), half)
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert not (folder / "c.parquet").exists()
    assert [p.name for p in folder.iterdir()][0].startswith(".c.parquet.tmp-")
    assert parquet_files(folder) == []
    Store(folder).open().close()  # the next run clears what the killed one left
    assert [p.name for p in folder.iterdir()] == [".lock"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("old")

    def boom(f):
        f.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, boom)
    assert path.read_text() == "old"


def test_corrupt_and_foreign_files_are_moved_aside_not_merged(tmp_path):
    warnings = []
    s = Store(tmp_path / "s", warn=warnings.append).open()
    s.write(ROWS, "abc")
    (tmp_path / "s" / "broken.parquet").write_bytes(b"PAR1 garbage")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "s" / "foreign.parquet")
    assert s.done() == {"abc"}
    assert sorted(p.name for p in (tmp_path / "s" / QUARANTINE).iterdir()) == [
        "broken.parquet",
        "foreign.parquet",
    ]
    assert len(warnings) == 2 and all("moved to" in w for w in warnings)
    assert len(read(tmp_path / "s")) == 2


def test_one_writer_at_a_time_and_a_dead_one_holds_nothing(tmp_path):
    first = Store(tmp_path / "s").open()
    with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
        Store(tmp_path / "s").open()
    first.close()
    store = str(tmp_path / "s")
    code = f"from ablate.store import Store; Store({store!r}).open(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)
    Store(tmp_path / "s").open().close()


def test_unwritable_and_missing_directories_are_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot write results here"):
        Store(tmp_path / "file" / "s").open()
    with pytest.raises(StoreError, match="no such results directory"):
        read(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="holds no results"):
        read(tmp_path / "empty")


def test_rows_stored_before_a_key_existed_belong_to_a_design_at_its_default(tmp_path):
    st = validate(
        Study(
            name="s",
            dataset="mnist",
            base=dict(hidden=(32,), lr=0.05),
            factors=dict(activation=["relu"]),
            seeds=1,
        )
    )
    cell = cells(st)[0]
    old = {
        k: v for k, v in cell.config.items() if k not in ("precision", "layers", "loss")
    }  # before those keys
    s = Store(tmp_path / "s").open()
    s.write(
        [{**r, "cell": cell.id, "seed": 0, "config": json.dumps(old, default=list)} for r in ROWS],
        "abc",
    )
    manifest = {
        "study": "s",
        "dataset": "mnist",
        "model": "mlp",
        "design": "grid",
        "base": dict(st.base),
        "factors": {"activation": ["relu"]},
    }
    s.write_manifest(manifest)
    assert read(tmp_path / "s")["cell"].tolist() == [cell.id] * 2
    for key, value in [("precision", "bf16"), ("dataset", "fashion_mnist"), ("model", "cnn")]:
        other = (
            {**manifest, "base": {**st.base, key: value}}
            if key == "precision"
            else {**manifest, key: value}
        )
        s.write_manifest(other)
        with pytest.raises(StoreError, match="none of its cells belong to the design"):
            read(tmp_path / "s")
    s.close()


def test_a_later_key_made_a_factor_reads_old_rows_at_its_default(tmp_path):
    s = Store(tmp_path / "s").open()
    old = json.dumps({"hidden": [32], "lr": 0.05})  # no `precision`: written before it was a key
    s.write([{**r, "config": old} for r in ROWS], "abc")
    s.write_manifest({"factors": {"precision": ["fp32", "bf16"]}})
    assert read(tmp_path / "s", warn=None)["precision"].tolist() == ["fp32", "fp32"]
    s.close()


def test_a_foreign_parquet_file_is_one_line(tmp_path):
    s = Store(tmp_path / "s").open()
    s.write([{k: v for k, v in r.items() if k != "seed"} for r in ROWS], "abc")
    s.close()
    with pytest.raises(
        StoreError, match="abc.parquet: not an ablate results file .no 'seed' column"
    ):
        read(tmp_path / "s")


def test_quarantine_keeps_both_files_of_one_name(tmp_path):
    warnings = []
    s = Store(tmp_path / "s", warn=warnings.append).open()
    for _ in range(2):
        (tmp_path / "s" / "broken.parquet").write_bytes(b"PAR1 garbage")
        s.done()
    kept = sorted(p.name for p in (tmp_path / "s" / QUARANTINE).iterdir())
    assert kept == ["broken.1.parquet", "broken.parquet"], kept
    assert "broken.1.parquet" in warnings[-1]


def test_a_copied_results_file_counts_each_cell_once(tmp_path):
    # merging from a second machine: the same file under another name doubled n (3 -> 6 seeds)
    s = Store(tmp_path / "s").open()
    s.write(ROWS, "abc")
    (tmp_path / "s" / "copy.parquet").write_bytes((tmp_path / "s" / "abc.parquet").read_bytes())
    said = []
    assert len(read(tmp_path / "s", said.append)) == 2
    assert len(said) == 1 and "1 cells are stored twice with identical rows" in said[0]
    assert (
        s.done() == {"abc"} and not (tmp_path / "s" / QUARANTINE).exists()
    )  # a harmless copy stays


def test_a_copy_with_other_values_is_named_on_read_and_moved_aside_by_run(tmp_path):
    s = Store(tmp_path / "s").open()
    s.write(ROWS, "abc")
    s.write([{**r, "test_acc": 0.5} for r in ROWS], "other")
    with pytest.raises(
        StoreError, match="other.parquet: holds cell abc with other values than abc.parquet"
    ):
        read(tmp_path / "s")
    assert s.done() == {"abc"} and [p.name for p in (tmp_path / "s" / QUARANTINE).iterdir()] == [
        "other.parquet"
    ]
    assert read(tmp_path / "s")["test_acc"].tolist() == [0.9, 0.9]


def test_malformed_results_files_are_named_in_one_line_or_moved_aside(tmp_path):
    s = Store(tmp_path / "s").open()
    s.write(ROWS, "abc")
    (tmp_path / "s" / MANIFEST).write_text("[1, 2]")  # a manifest that is a JSON list
    with pytest.raises(StoreError, match="not an object"):
        read(tmp_path / "s")
    (tmp_path / "s" / MANIFEST).write_text("{}")
    no_status = pd.DataFrame(
        [{k: v for k, v in r.items() if k != "status"} | {"cell": "x"} for r in ROWS]
    )
    no_status.to_parquet(tmp_path / "s" / "nostatus.parquet")  # cell and epoch, but no status
    with pytest.raises(
        StoreError, match="nostatus.parquet: not an ablate results file .no 'status' column"
    ):
        read(tmp_path / "s")
    words = pd.DataFrame(
        [r | {"cell": "y", "test_acc": "0.9"} for r in ROWS]
    )  # a metric stored as text
    words.to_parquet(tmp_path / "s" / "words.parquet")
    assert s.done() == {"abc"}  # run no longer counts either as stored
    moved = sorted(p.name for p in (tmp_path / "s" / QUARANTINE).iterdir())
    assert moved == ["nostatus.parquet", "words.parquet"]


def test_a_group_of_empty_tuples_stores_its_column_typed_so_the_folder_reads_whole(tmp_path):
    # a group of hidden=() alone wrote list<null>; pandas then failed on the folder when that
    # file sorted first: "Unsupported cast from int64 to null"
    store = Store(tmp_path / "xor").open()
    factors = {"hidden": [(), (4,)]}
    row = dict(study="xor", seed=0, epoch=1, test_acc=0.5, status="ok", config="{}")
    store.write([{**row, "cell": "a", "hidden": []}], "a-first", factors)
    store.write([{**row, "cell": "b", "hidden": [4]}], "b-second", factors)
    store.close()
    hidden = pq.read_schema(tmp_path / "xor" / "a-first.parquet").field("hidden").type
    assert str(hidden.value_type) == "int64"
    df = pd.read_parquet(tmp_path / "xor")
    assert df.sort_values("cell")["hidden"].map(list).tolist() == [[], [4]]


def test_a_quarantine_folder_that_is_a_link_is_refused_and_nothing_moves(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    s = Store(tmp_path / "s").open()
    s.write(ROWS, "abc")
    (tmp_path / "s" / "broken.parquet").write_bytes(b"PAR1 garbage")
    (tmp_path / "s" / QUARANTINE).symlink_to(elsewhere)  # made while the run holds the folder
    with pytest.raises(StoreError, match=f"{QUARANTINE}: is a symbolic link") as said:
        s.done()
    s.close()
    with pytest.raises(StoreError, match=f"{QUARANTINE}: is a symbolic link"):
        Store(tmp_path / "s").open()  # the next run: refused before the lock is taken
    assert said.value.code == 2 and list(elsewhere.iterdir()) == []
    assert (tmp_path / "s" / "broken.parquet").read_bytes() == b"PAR1 garbage"


def test_a_results_file_or_manifest_that_is_a_link_is_neither_read_nor_replaced(tmp_path):
    s = Store(tmp_path / "s").open()
    s.write(ROWS, "abc")
    s.close()
    theirs = pd.DataFrame([{**r, "cell": "xyz"} for r in ROWS])
    theirs.to_parquet(tmp_path / "theirs.parquet", index=False)
    (tmp_path / "s" / "x.parquet").symlink_to(tmp_path / "theirs.parquet")
    with pytest.raises(StoreError, match="x.parquet: is a symbolic link"):
        read(tmp_path / "s")  # before: its rows were merged as the study's
    (tmp_path / "s" / "x.parquet").unlink()
    (tmp_path / "m.json").write_text("{}")
    (tmp_path / "s" / MANIFEST).symlink_to(tmp_path / "m.json")
    with pytest.raises(StoreError, match=f"{MANIFEST}: is a symbolic link"):
        Store(tmp_path / "s").write_manifest({"study": "s"})  # before: the link was replaced
    assert (tmp_path / "s" / MANIFEST).is_symlink() and (tmp_path / "m.json").read_text() == "{}"


def test_a_foreign_file_sorting_first_loses_to_the_file_this_folders_runs_wrote(tmp_path):
    s = Store(tmp_path / "s").open()
    s.write(ROWS, "g-abc")  # the group file this folder's run wrote
    foreign = pd.DataFrame([{**r, "test_acc": 0.5} for r in ROWS])
    foreign.to_parquet(tmp_path / "s" / "a_other_machine.parquet", index=False)
    with pytest.raises(StoreError) as said:
        read(tmp_path / "s")
    assert str(said.value).startswith(str(tmp_path / "s" / "a_other_machine.parquet"))
    assert "other values than g-abc.parquet, the file this folder's runs wrote" in str(said.value)
    assert s.done() == {"abc"}  # before: g-abc.parquet went to _quarantine
    assert os.listdir(tmp_path / "s" / QUARANTINE) == ["a_other_machine.parquet"]
    assert read(tmp_path / "s")["test_acc"].tolist() == [0.9, 0.9]


def test_a_received_file_with_a_nan_metric_in_an_ok_row_leaves_its_cell_out_and_says_so(tmp_path):
    # the committed digits results, one group file edited: cell's last test_acc NaN, still "ok"
    folder = tmp_path / "digits_mlp"
    folder.mkdir()
    for f in (REPO / "results" / "digits_mlp").iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    edited = parquet_files(folder)[0]
    rows = pq.read_table(edited).to_pandas()
    cell = rows["cell"].iloc[0]
    rows.loc[(rows["cell"] == cell) & (rows["epoch"] == rows["epoch"].max()), "test_acc"] = None
    rows.to_parquet(edited, index=False)
    said = []
    df = read(folder, warn=said.append)
    assert cell not in set(df["cell"]) and df["cell"].nunique() == 19
    assert [s for s in said if "NaN" in s] == [
        f"{edited}: cell {cell} is marked ok but its test_acc is NaN at epoch "
        f"{rows['epoch'].max()}; the cell is left out of report, compare and plan alike"
    ]


@pytest.fixture(scope="module")
def predicted_folder(tmp_path_factory):
    """A real run's results: 2 digits cells (899 test images, 10 classes) trained as one group,
    so one predictions file of 2 cells beside labels.parquet."""
    from ablate import runner
    from ablate.executor import RunOptions

    out = tmp_path_factory.mktemp("predicted")
    study = validate(
        Study(
            name="p",
            dataset="digits",
            base=dict(lr=0.05, epochs=1, batch_size=64, train_subset=256),
            factors=dict(lr=[0.05, 0.1]),
            seeds=1,
            source="studies/p.py",
        )
    )
    assert runner.run(study, RunOptions(out=out, device="cpu", max_group=2)).trained == 2
    return study, out / "p"


def received(predicted_folder, tmp_path) -> tuple[Path, Path]:
    """A copy of the run's folder, as received from elsewhere, and its predictions file."""
    folder = tmp_path / "p"
    shutil.copytree(predicted_folder[1], folder, symlinks=True)
    (file,) = (folder / PREDICTIONS).glob("g*.parquet")
    return folder, file


def rewrite(file: Path, change, kind=pa.int16(), cells=None) -> None:
    """The file with change(i, classes, labels) for each cell's list of classes, typed
    list<kind>, and cells(ids) for its cell ids."""
    table, labels = pq.read_table(file), pq.read_table(file.parent / LABELS)["label"].to_pylist()
    lists = [change(i, v, labels) for i, v in enumerate(table["predicted"].to_pylist())]
    table = table.set_column(2, "predicted", pa.array(lists, pa.list_(kind)))
    if cells:
        table = table.set_column(0, "cell", pa.array(cells(table["cell"].to_pylist())))
    pq.write_table(table, file)


def miss_one(i: int, classes: list, labels: list) -> list:
    """The first cell's first right answer made wrong: a valid class, one hit fewer."""
    if i:
        return classes
    at = next(k for k, pair in enumerate(zip(classes, labels, strict=True)) if pair[0] == pair[1])
    return [*classes[:at], (classes[at] + 1) % 10, *classes[at + 1 :]]


TAMPERED = {  # how: (tamper with the file, what the line says, cells still read)
    "junk bytes": (lambda f: f.write_bytes(b"PAR1 junk"), "unreadable Parquet", 0),
    "a short list": (
        lambda f: rewrite(f, lambda i, v, y: v[:-1]),
        "holds 898 predictions per cell, not 899 (the labels)",
        0,
    ),
    "int64 classes": (
        lambda f: rewrite(f, lambda i, v, y: v, pa.int64()),
        "not an ablate predictions file (columns cell string, epoch int64, predicted list<",
        0,
    ),
    "another column": (
        lambda f: pq.write_table(pq.read_table(f).append_column("x", pa.array([1, 2])), f),
        "not an ablate predictions file",
        0,
    ),
    "class 10 of 10": (
        lambda f: rewrite(f, lambda i, v, y: [10, *v[1:]]),
        "holds classes outside 0..9",
        0,
    ),
    "a changed prediction": (  # a valid class, but the first cell no longer scores its test_acc
        lambda f: rewrite(f, miss_one),
        "do not score its stored final test_acc; left out",
        1,
    ),
    "a cell of another design": (
        lambda f: rewrite(f, lambda i, v, y: v, cells=lambda ids: ["zzz", *ids[1:]]),
        "1 test predictions are of cells not in the study's current design",
        1,
    ),
}


@pytest.mark.parametrize("how", list(TAMPERED))
def test_a_tampered_predictions_file_is_one_line_naming_it_and_its_cells_left_out(
    predicted_folder, tmp_path, how
):
    folder, file = received(predicted_folder, tmp_path)
    labels, whole = read_predictions(folder, warn=pytest.fail)
    assert len(whole) == 2 and len(labels) == 899
    tamper, expected, left = TAMPERED[how]
    tamper(file)
    said = []
    labels, kept = read_predictions(folder, warn=said.append)
    assert len(said) == 1 and "\n" not in said[0], said
    assert said[0].startswith(f"{file}: ") and expected in said[0], said[0]
    assert len(kept) == left and all(np.array_equal(kept[c], whole[c]) for c in kept)
    assert len(labels) == 899


@pytest.mark.parametrize(
    "tamper, expected",
    [
        (lambda f: f.write_bytes(b"junk"), "unreadable Parquet"),
        (
            lambda f: pq.write_table(pa.table({"label": pa.array([1, 2], pa.int16())}), f),
            "holds 2 labels, but",
        ),
        (
            lambda f: pq.write_table(pa.table({"label": pa.array(range(899))}), f),
            "not an ablate labels file",
        ),
        (lambda f: f.unlink(), "is missing"),
    ],
)
def test_tampered_labels_are_one_line_and_no_predictions(
    predicted_folder, tmp_path, tamper, expected
):
    folder, _ = received(predicted_folder, tmp_path)
    tamper(folder / PREDICTIONS / LABELS)
    said = []
    assert read_predictions(folder, warn=said.append) == (None, {})
    assert len(said) == 1 and expected in said[0] and "\n" not in said[0], said
    assert said[0].startswith(f"{folder / PREDICTIONS / LABELS}: ")


def test_a_predictions_file_or_folder_that_is_a_link_is_refused_in_one_line(
    predicted_folder, tmp_path
):
    from ablate import runner

    study = predicted_folder[0]
    for linked in ("file", "folder"):
        folder, file = received(predicted_folder, tmp_path / linked)
        target = file if linked == "file" else folder / PREDICTIONS
        elsewhere = tmp_path / f"elsewhere-{linked}"
        os.replace(target, elsewhere)
        target.symlink_to(elsewhere, target_is_directory=linked == "folder")
        with pytest.raises(StoreError) as read_error:
            read_predictions(folder)
        with pytest.raises(StoreError) as run_error:  # ablate run refuses the folder alike
            runner.results_dir(study, folder.parent)
        for e in (read_error, run_error):
            assert str(e.value).startswith(f"{target}: is a symbolic link") and "\n" not in str(
                e.value
            )
        assert elsewhere.exists()  # nothing through the link was moved or deleted


def test_labels_are_written_once_and_never_replaced_by_other_labels(tmp_path):
    s = Store(tmp_path / "s").open()
    assert s.write_labels(np.array([0, 1, 2, 1])) == ""
    file = tmp_path / "s" / PREDICTIONS / LABELS
    before = file.read_bytes()
    assert s.write_labels(np.array([0, 1, 2, 1])) == ""  # the same: kept as it is
    problem = s.write_labels(np.array([0, 1, 2, 2]))
    assert problem == (
        f"{file}: holds other test labels than this run's dataset (4 rows); "
        "this run stores no test predictions"
    )
    assert file.read_bytes() == before
    record = json.loads((tmp_path / "s" / "_files.json").read_text())["files"]
    assert record[f"{PREDICTIONS}/{LABELS}"]["sha256"] == sha256(file)
    s.close()

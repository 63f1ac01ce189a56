"""Two results folders of one study side by side: each design point's mean of B against A's 95% CI.

A is the reference (the committed CPU results), B the new run (a GPU's, say). Per design point:
seeds and mean with its 95% t interval in each, B minus A, and over the cells both hold (same
config, same seed: the same cell id) the mean and largest per-cell difference. `inside` says
whether B's mean lies inside A's interval. Exit 0 when every point of A is in B and inside,
1 otherwise, 2 when a folder cannot be read.

    python benchmarks/compare_results.py results/mnist_mlp runs/mnist_mlp [--metric test_acc]
        [--csv compare.csv]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ablate import stats, store  # noqa: E402
from ablate.study import AblateError  # noqa: E402


def finals(path: str, metric: str) -> tuple[pd.DataFrame, list[str]]:
    """Each cell's last epoch and the design's factor columns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a copied file or a --set override: the table says it all
        df = stats.tidy(store.read(path, warn=None))
    if metric not in df.columns:
        raise AblateError(f"{path}: no column {metric!r}")
    return stats.final(df), stats.factor_columns(df)


def device(path: str) -> str:
    """The device and torch of the folder's latest run, from its manifest."""
    runs = store.read_manifest(path).get("runs") or [{}]
    return f"{runs[-1].get('device', '?')}, torch {runs[-1].get('torch', '?')}"


def compare(a: pd.DataFrame, b: pd.DataFrame, factors: list[str], metric: str) -> pd.DataFrame:
    """One row per design point of A (in A's order): the two summaries and their differences."""
    sa, sb = stats.summary(a, factors, metric), stats.summary(b, factors, metric)
    key = lambda df: [json.dumps(p, default=str) for p in stats.points(df, factors)]  # noqa: E731
    sa["point"], sb["point"] = key(sa), key(sb)
    table = sa.merge(sb.drop(columns=factors), on="point", how="left", suffixes=("_a", "_b"))
    paired = a[["cell", metric]].merge(b[["cell", metric]], on="cell", suffixes=("_a", "_b"))
    paired["diff"] = paired[f"{metric}_b"] - paired[f"{metric}_a"]
    paired["point"] = key(a.set_index("cell").loc[paired["cell"]].reset_index())
    per_point = paired.groupby("point")["diff"]
    table["diff"] = table["mean_b"] - table["mean_a"]
    table["paired_cells"] = table["point"].map(per_point.size()).fillna(0).astype(int)
    table["mean_cell_diff"] = table["point"].map(per_point.mean())
    table["max_abs_cell_diff"] = table["point"].map(per_point.apply(lambda d: d.abs().max()))
    table["inside"] = (table["mean_b"] >= table["ci_low_a"]) & (
        table["mean_b"] <= table["ci_high_a"]
    )
    columns = [*factors, "n_seeds_a", "mean_a", "ci_low_a", "ci_high_a", "n_seeds_b", "mean_b"]
    columns += ["ci_low_b", "ci_high_b", "diff", "paired_cells", "mean_cell_diff"]
    return table[[*columns, "max_abs_cell_diff", "inside"]]


def show(table: pd.DataFrame, factors: list[str]) -> str:
    """The table as aligned text, values in points (percent) for a fraction metric."""
    pct = lambda v: "" if pd.isna(v) else f"{100 * v:.2f}"  # noqa: E731
    diff = lambda v: "" if pd.isna(v) else f"{100 * v:+.2f}"  # noqa: E731
    rows = [
        [str(r[f]) for f in factors]
        + [
            str(int(r["n_seeds_a"])),
            f"{pct(r['mean_a'])} [{pct(r['ci_low_a'])}, {pct(r['ci_high_a'])}]",
            "" if pd.isna(r["n_seeds_b"]) else str(int(r["n_seeds_b"])),
            f"{pct(r['mean_b'])} [{pct(r['ci_low_b'])}, {pct(r['ci_high_b'])}]",
            diff(r["diff"]),
            str(r["paired_cells"]),
            diff(r["mean_cell_diff"]),
            pct(r["max_abs_cell_diff"]),
            "yes" if r["inside"] else "NO",
        ]
        for _, r in table.iterrows()
    ]
    head = [*factors, "n A", "A mean [95% CI]", "n B", "B mean [95% CI]", "B-A", "paired"]
    head += ["mean cell diff", "max |cell diff|", "B inside A's CI"]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="reference results folder (e.g. results/mnist_mlp)")
    ap.add_argument("b", help="results folder to check against it")
    ap.add_argument("--metric", default="test_acc")
    ap.add_argument("--csv", default=None, help="also write the table here")
    args = ap.parse_args()
    try:
        (a, factors), (b, factors_b) = finals(args.a, args.metric), finals(args.b, args.metric)
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if factors != factors_b:
        print(f"error: factors differ: {factors} in A, {factors_b} in B", file=sys.stderr)
        return 2
    table = compare(a, b, factors, args.metric)
    print(f"A: {args.a} ({device(args.a)}), {len(a)} cells")
    print(f"B: {args.b} ({device(args.b)}), {len(b)} cells")
    print(f"final {args.metric}, in points; B inside A's CI: B's mean within A's 95% t interval\n")
    print(show(table, factors))
    missing = int(table["n_seeds_b"].isna().sum())
    outside = int((~table["inside"]).sum()) - missing
    cells = table["paired_cells"].sum()
    worst = table["max_abs_cell_diff"].max()
    inside = len(table) - outside - missing
    print(
        f"\n{len(table)} design points: {inside} inside, {outside} outside, {missing} missing "
        f"from B; {cells} cells in both, largest per-cell difference {100 * worst:.2f} points"
    )
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"written: {args.csv}")
    return 0 if outside == 0 and missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

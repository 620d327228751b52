"""A node's training data: held-out splits and the CSV loader the benchmark harness uses.

Pure functions over numpy arrays; files are read only in :func:`read_centre_csv`.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BenchInputError",
    "NodeData",
    "CentreTable",
    "stratified_split",
    "group_split",
    "read_centre_csv",
    "read_bench_folder",
    "round_count",
    "split_table",
]

DEFAULT_NA = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "?")


class BenchInputError(ValueError):
    """Bad benchmark input; the message names the file and column."""


@dataclass
class NodeData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    # each row's privacy unit (patient) as an integer; None: every row is its own unit
    g_train: np.ndarray | None = None
    g_test: np.ndarray | None = None

    @property
    def cohort_size(self) -> int:
        return len(self.y_train) + len(self.y_test)


def round_count(n: int, to: int = 10) -> int:
    """Counts that leave a node are rounded (to the nearest ``to``, at least ``to`` if n > 0)."""
    if n <= 0:
        return 0
    return max(to, int(round(n / to)) * to)


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of row indices → (train, test); each class keeps its share."""
    if not 0 < test_fraction < 1:
        raise ValueError("test fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    test_idx: list[int] = []
    for cls in np.unique(y):
        rows = np.flatnonzero(y == cls)
        rng.shuffle(rows)
        n_test = int(round(len(rows) * test_fraction))
        if len(rows) >= 2:
            n_test = min(max(n_test, 1), len(rows) - 1)
        test_idx += rows[:n_test].tolist()
        train_idx += rows[n_test:].tolist()
    return np.array(sorted(train_idx), dtype=int), np.array(sorted(test_idx), dtype=int)


def group_split(
    groups: Sequence[str], y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split rows so that all rows of a group (patient) fall on one side; stratified by whether
    the group has any positive row; seeded."""
    keys = sorted(set(groups))
    has_pos = {g: 0 for g in keys}
    for g, label in zip(groups, y, strict=True):
        if label:
            has_pos[g] = 1

    # A stable, seeded order that does not depend on Python's hash randomisation.
    def order(g: str) -> str:
        return hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()

    test_groups: set[str] = set()
    for flag in (0, 1):
        members = sorted((g for g in keys if has_pos[g] == flag), key=order)
        n_test = int(round(len(members) * test_fraction))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_groups.update(members[:n_test])
    test = np.array([i for i, g in enumerate(groups) if g in test_groups], dtype=int)
    train = np.array([i for i, g in enumerate(groups) if g not in test_groups], dtype=int)
    return train, test


def split_table(
    y: np.ndarray, groups: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A centre's held-out split: by patient when the table names them (all of a patient's rows
    on one side), else by row (stratified). The ClientApp and the bench's baselines use it."""
    if groups is None:
        return stratified_split(y, test_fraction, seed)
    return group_split([str(v) for v in groups], y, test_fraction, seed)


@dataclass
class CentreTable:
    name: str
    path: Path
    columns: list[str]  # feature columns, in file order
    x: np.ndarray  # may hold NaN (missing)
    y: np.ndarray
    groups: np.ndarray | None = None  # the group column's values (patients), when named


def read_centre_csv(
    path: Path, label: str, na_values: Sequence[str] = DEFAULT_NA, group: str | None = None
) -> CentreTable:
    """Read one centre's CSV: header row, numeric features, ``label`` positive when non-zero;
    ``group`` (optional) names a numeric column of patient numbers, not a feature."""
    na = set(na_values)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise BenchInputError(f"{path.name}: not a UTF-8 text CSV file") from None
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise BenchInputError(f"{path.name}: empty file (a header row is required)")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise BenchInputError(f"{path.name}: duplicate column(s) {', '.join(dupes)}")
    if label not in header:
        raise BenchInputError(f"{path.name}: label column {label!r} is missing")
    data = rows[1:]
    if not data:
        raise BenchInputError(f"{path.name}: no data rows")
    values = np.full((len(data), len(header)), np.nan, dtype=np.float64)
    for r, row in enumerate(data, start=2):
        if len(row) != len(header):
            raise BenchInputError(
                f"{path.name}: line {r} has {len(row)} fields, the header has {len(header)}"
            )
        for c, cell in enumerate(row):
            text = cell.strip()
            if text in na:
                continue
            try:
                value = float(text)
            except ValueError:
                raise BenchInputError(
                    f"{path.name}: column {header[c]!r}, line {r}: {text[:30]!r} is not a number"
                    " (declare missing-value markers with --na-values)"
                ) from None
            if not math.isfinite(value):
                raise BenchInputError(
                    f"{path.name}: column {header[c]!r}, line {r}: {text!r} is not finite"
                )
            values[r - 2, c] = value
    li = header.index(label)
    y_raw = values[:, li]
    if np.isnan(y_raw).any():
        line = int(np.flatnonzero(np.isnan(y_raw))[0]) + 2
        raise BenchInputError(f"{path.name}: column {label!r}, line {line}: the label is missing")
    y = (y_raw != 0).astype(np.float32)
    if len(np.unique(y)) < 2:
        raise BenchInputError(
            f"{path.name}: label column {label!r} is constant (needs positive and negative rows)"
        )
    groups = None
    drop = [li]
    if group is not None:
        if group not in header:
            raise BenchInputError(f"{path.name}: group column {group!r} is missing")
        gi = header.index(group)
        if np.isnan(values[:, gi]).any():
            raise BenchInputError(f"{path.name}: group column {group!r} has missing values")
        groups = values[:, gi].astype(np.int64)
        drop.append(gi)
    columns = [h for i, h in enumerate(header) if i not in drop]
    x = np.delete(values, drop, axis=1)
    for c, name in enumerate(columns):
        if np.isnan(x[:, c]).all():
            raise BenchInputError(f"{path.name}: column {name!r} has no numeric values")
    return CentreTable(path.stem, path, columns, x, y, groups)


def read_bench_folder(
    folder: Path, label: str, na_values: Sequence[str] = DEFAULT_NA, group: str | None = None
) -> list[CentreTable]:
    """All ``*.csv`` of a folder, one per centre, with the same columns."""
    if not folder.is_dir():
        raise BenchInputError(f"{folder}: not a directory")
    files = sorted(folder.glob("*.csv"))
    if len(files) < 2:
        raise BenchInputError(
            f"{folder}: found {len(files)} CSV file(s); federated benchmarking needs at least 2"
            " centres (one CSV per centre)"
        )
    tables = [read_centre_csv(p, label, na_values, group) for p in files]
    first = tables[0]
    for t in tables[1:]:
        if t.columns != first.columns:
            extra = sorted(set(t.columns) - set(first.columns))
            lacking = sorted(set(first.columns) - set(t.columns))
            detail = []
            if extra:
                detail.append(f"column(s) {', '.join(extra)} not in {first.path.name}")
            if lacking:
                detail.append(f"missing column(s) {', '.join(lacking)}")
            if not detail:
                detail.append("same columns in a different order")
            raise BenchInputError(
                f"{t.path.name}: columns differ from {first.path.name}: " + "; ".join(detail)
            )
    return tables

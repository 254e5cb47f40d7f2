"""Row-compressed sparse matrices in plain numpy, for the sparse k-reciprocal encodings.

Only the few operations the re-ranker needs, each vectorised (no Python loop over rows), so
no dependency on scipy.sparse is taken for them.
"""

from typing import NamedTuple

import numpy as np


class SparseRows(NamedTuple):
    """Row i holds the entries `columns[indptr[i]:indptr[i + 1]]` with `values` at the same positions."""

    indptr: np.ndarray  # int64 [num_rows + 1]
    columns: np.ndarray  # int32 [num_entries]
    values: np.ndarray  # float32 [num_entries]


def ragged_arange(starts, lengths):
    """The concatenation of arange(start, start + length) over the pairs: int64 [sum(lengths)]."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    return np.arange(total) + np.repeat(starts - (ends - lengths), lengths)


def gather_rows(sparse, rows):
    """The entries of `rows` (int array), in that order.

    Returns:
      (owners, columns, values): owners[e] is the position in `rows` of entry e's row.
    """
    starts = sparse.indptr[rows]
    lengths = sparse.indptr[rows + 1] - starts
    positions = ragged_arange(starts, lengths)
    owners = np.repeat(np.arange(len(rows)), lengths)
    return owners, sparse.columns[positions], sparse.values[positions]


def from_entries(owners, columns, values, num_rows):
    """A SparseRows of `num_rows` rows from entries grouped by row (`owners` non-decreasing)."""
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(owners, minlength=num_rows), out=indptr[1:])
    return SparseRows(indptr, columns.astype(np.int32), values.astype(np.float32))


def stack_rows(parts):
    """One SparseRows from SparseRows of consecutive row ranges."""
    offsets = np.cumsum([0] + [part.indptr[-1] for part in parts[:-1]])
    indptr = np.concatenate([[0]] + [part.indptr[1:] + offset for part, offset in zip(parts, offsets, strict=True)])
    columns = np.concatenate([part.columns for part in parts])
    return SparseRows(indptr, columns, np.concatenate([part.values for part in parts]))


def slice_rows(sparse, start, stop):
    """Rows [start, stop) as a new SparseRows (copies, so the whole matrix can be freed)."""
    begin, end = sparse.indptr[start], sparse.indptr[stop]
    columns, values = sparse.columns[begin:end].copy(), sparse.values[begin:end].copy()
    return SparseRows(sparse.indptr[start : stop + 1] - begin, columns, values)


def transpose(sparse, num_columns):
    """The transpose, i.e. an inverted index: row j lists the rows with an entry in column j."""
    rows = np.repeat(np.arange(len(sparse.indptr) - 1, dtype=np.int32), np.diff(sparse.indptr))
    order = np.argsort(sparse.columns, kind="stable")
    indptr = np.zeros(num_columns + 1, dtype=np.int64)
    np.cumsum(np.bincount(sparse.columns, minlength=num_columns), out=indptr[1:])
    return SparseRows(indptr, rows[order], sparse.values[order])

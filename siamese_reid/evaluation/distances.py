"""Query x gallery distances, computed a block of queries at a time within a memory budget.
Pure numpy.

`QueryGalleryDistances` hands out rows of the distance matrix on demand, so that ranking,
threshold fitting and figures never need the whole matrix; `compute_distances` builds the
whole matrix from the same rows, for small problems. Products are accumulated in float64 and
rounded to float32, so a row is the same whichever block computed it (float32 matrix products
round differently with the shape of the call).
"""

import numpy as np

from siamese_reid.errors import ReIDError

# Working memory of one block of rows unless the caller says otherwise.
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 2**20


# evaluation.metric -> what it computes (smaller is more similar)
METRICS = {"euclidean": "||q - g||_2", "cosine": "1 - cos(q, g)"}


def _squared_norms(features, rows_per_chunk):
    """|x|^2 of each row in float64 [num_rows], converting `rows_per_chunk` rows at a time."""
    return np.concatenate(
        [
            np.square(features[start : start + rows_per_chunk], dtype=np.float64).sum(axis=1)
            for start in range(0, len(features), rows_per_chunk)
        ]
        or [np.zeros(0)]
    )


def _check_features(query_features, gallery_features, metric):
    if metric not in METRICS:
        raise ReIDError(f"distance metric must be one of {list(METRICS)}, got {metric!r}")
    if query_features.ndim != 2 or gallery_features.ndim != 2:
        raise ReIDError("features must be 2-D arrays [num_images, embedding_dim]")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ReIDError(
            f"query and gallery features differ in size: {query_features.shape[1]} vs {gallery_features.shape[1]}"
        )


class DistanceRows:
    """The row interface of distances computed on demand, for a subclass with `num_query`,
    `num_gallery` and `distances(start, stop)`: `shape`, `len()` and `rows[query_index]`."""

    @property
    def shape(self):
        return self.num_query, self.num_gallery

    def __len__(self):
        return self.num_query

    def __getitem__(self, query_index):
        """The distances of one query to the whole gallery, float32 [num_gallery]; a negative
        index counts from the last query, as in a matrix."""
        if not -self.num_query <= query_index < self.num_query:
            raise IndexError(f"query {query_index} is outside [0, {self.num_query})")
        query_index %= self.num_query
        return self.distances(query_index, query_index + 1)[0]


class QueryGalleryDistances(DistanceRows):
    """The query x gallery distance matrix, computed a piece at a time when asked for.

    euclidean: ||q - g||_2 as sqrt(|q|^2 + |g|^2 - 2 q.g) clipped at 0; cosine: 1 - cos(q, g).
    Smaller is more similar. Distances are float32, from float64 products and sums.

    Three ways to read it, each within `memory_budget_bytes` of working memory beyond the
    features and O(num_query + num_gallery) norms (float32 features are never copied; cosine
    scales each row to unit length as a tile converts it to float64):
      * `query_blocks()` and `gallery_tiles(start, stop)`: the whole matrix as [query block x
        gallery slice] tiles, for a pass over everything (ranking); large query blocks keep
        the matrix products efficient;
      * `distances(start, stop)` / `rows[query_index]`: whole rows, for a few queries;
      * `pairs(query_index, columns)`: chosen entries of one row.

    Args:
      query_features, gallery_features: float arrays [num_query, dim], [num_gallery, dim].
      metric: a key of `METRICS`.
      memory_budget_bytes: working memory (default 256 MiB, at least 1 MiB).
    """

    # bytes per tile element: float64 product, float32 distance, one comparison
    _TILE_BYTES = 13

    def __init__(self, query_features, gallery_features, metric="euclidean", memory_budget_bytes=None):
        query_features = np.asarray(query_features, dtype=np.float32)
        gallery_features = np.asarray(gallery_features, dtype=np.float32)
        _check_features(query_features, gallery_features, metric)
        budget = memory_budget_bytes or DEFAULT_MEMORY_BUDGET_BYTES
        if budget < 2**20:
            raise ReIDError(f"memory_budget_bytes must be at least 1 MiB, got {budget}")
        self.metric = metric
        self.query_features, self.gallery_features = query_features, gallery_features
        self.num_query, self.num_gallery = len(query_features), len(gallery_features)
        # A tile's float64 operands count against the budget too: at 2,048 dimensions a slice of
        # 20,000 gallery rows is 330 MB.
        row_bytes = 8 * query_features.shape[1]
        chunk = max(1, budget // (4 * row_bytes))
        self.query_squared = _squared_norms(query_features, chunk)
        self.gallery_squared = _squared_norms(gallery_features, chunk)
        # cosine: 1 - (q / |q|).(g / |g|), the scalings applied to the float64 operands of each tile
        self._query_scale = self._gallery_scale = None
        if metric == "cosine":
            self._query_scale = 1.0 / np.maximum(np.sqrt(self.query_squared), 1e-12)[:, None]
            self._gallery_scale = 1.0 / np.maximum(np.sqrt(self.gallery_squared), 1e-12)[:, None]
        # The whole gallery in float64 when it takes at most a quarter of the budget; else each
        # tile converts its slice.
        small = self.num_gallery * row_bytes <= budget // 4
        self._gallery64 = None
        self._gallery64 = self._gallery(0, self.num_gallery) if small else None
        self._size_tiles(budget - (self.num_gallery * row_bytes if small else 0), row_bytes, small)

    def _size_tiles(self, budget, row_bytes, gallery_held):
        """Tiles of `tile_rows` x `tile_columns` whose distances and float64 operands (the query
        rows, and the gallery slice unless the whole gallery is held) fit in `budget` bytes."""
        self._tile_budget, self._row_bytes = budget, row_bytes
        self._column_bytes = 0 if gallery_held else row_bytes
        rows = max(1, min(self.num_query, 1024, budget // (4 * row_bytes)))
        self.tile_columns = self._columns_for(rows)
        rows = (budget - self.tile_columns * self._column_bytes) // (self._TILE_BYTES * self.tile_columns + row_bytes)
        self.tile_rows = max(1, rows)
        self.rows_per_block = max(1, budget // (self._TILE_BYTES * max(self.num_gallery, 1) + row_bytes))

    def _columns_for(self, rows):
        """The most gallery columns a tile of `rows` queries may span within the budget."""
        columns = (self._tile_budget - rows * self._row_bytes) // (self._TILE_BYTES * rows + self._column_bytes)
        return min(max(self.num_gallery, 1), max(1, columns))

    def _gallery(self, first, last):
        """Gallery rows [first, last) as float64 operands (unit length for cosine)."""
        if self._gallery64 is not None:
            return self._gallery64[first:last]
        rows = self.gallery_features[first:last].astype(np.float64)
        if self._gallery_scale is not None:
            rows *= self._gallery_scale[first:last]
        return rows

    def _finish(self, products, query_squared, gallery_squared):
        """float64 products of the scaled queries (see `_queries`) -> float32 distances, with as
        few passes over the tile as possible (they, not the product, dominate at scale)."""
        if self.metric == "cosine":
            products += 1.0  # 1 - q.g
            return products.astype(np.float32)
        products += query_squared  # |q|^2 + |g|^2 - 2 q.g, in float64 where it cancels
        products += gallery_squared
        squared = products.astype(np.float32)
        np.maximum(squared, 0.0, out=squared)
        return np.sqrt(squared, out=squared)

    def _queries(self, first, last):
        """Query rows [first, last) as float64 operands, times -2 (euclidean) or -1 / |q|
        (cosine): scalings of the small operand that save a pass over every tile."""
        queries = self.query_features[first:last].astype(np.float64)
        queries *= -2.0 if self._query_scale is None else -self._query_scale[first:last]
        return queries

    def tile(self, query_start, query_stop, gallery_start, gallery_stop):
        """Distances of queries [query_start, query_stop) to gallery [gallery_start, gallery_stop)."""
        products = self._queries(query_start, query_stop) @ self._gallery(gallery_start, gallery_stop).T
        query_squared = self.query_squared[query_start:query_stop, None]
        return self._finish(products, query_squared, self.gallery_squared[None, gallery_start:gallery_stop])

    def query_blocks(self):
        """(start, stop) of the blocks of `tile_rows` queries that cover all queries."""
        return [
            (start, min(start + self.tile_rows, self.num_query)) for start in range(0, self.num_query, self.tile_rows)
        ]

    def gallery_tiles(self, query_start, query_stop):
        """Yields (gallery start, float32 tile) across the gallery for these queries."""
        for gallery_start in range(0, self.num_gallery, self.tile_columns):
            gallery_stop = min(gallery_start + self.tile_columns, self.num_gallery)
            yield gallery_start, self.tile(query_start, query_stop, gallery_start, gallery_stop)

    def distances(self, start, stop):
        """Whole rows [start, stop), float32 [stop - start, num_gallery]."""
        stop = min(stop, self.num_query)
        output = np.empty((max(stop - start, 0), self.num_gallery), dtype=np.float32)
        slice_size = self._columns_for(max(len(output), 1))
        for first in range(0, self.num_gallery, slice_size):
            last = min(first + slice_size, self.num_gallery)
            output[:, first:last] = self.tile(start, stop, first, last)
        return output

    def pairs(self, query_index, columns):
        """Distances of one query to the gallery images `columns`, float32 [len(columns)]."""
        gallery = self.gallery_features[columns].astype(np.float64)
        if self._gallery_scale is not None:
            gallery *= self._gallery_scale[columns]
        products = gallery @ self._queries(query_index, query_index + 1)[0]
        return self._finish(products, self.query_squared[query_index], self.gallery_squared[columns])

    def blocks(self):
        """Yields (start, rows) over all queries, `rows_per_block` whole rows at a time."""
        for start in range(0, self.num_query, self.rows_per_block):
            yield start, self.distances(start, start + self.rows_per_block)


def compute_distances(query_features, gallery_features, metric="euclidean", chunk_size=None):
    """Returns the whole float32 distance matrix [num_query, num_gallery].

    For problems whose matrix fits in memory; `evaluate_embeddings` ranks without one.
    `chunk_size` (queries per block) only changes how the work is split, not the result.
    """
    rows = QueryGalleryDistances(query_features, gallery_features, metric)
    if chunk_size is not None:
        rows.rows_per_block = max(1, int(chunk_size))
    output = np.empty(rows.shape, dtype=np.float32)
    for start, block in rows.blocks():
        output[start : start + len(block)] = block
    return output


class MatrixRows(DistanceRows):
    """A whole distance matrix behind the row interface of `QueryGalleryDistances`, read
    `rows_per_block` rows at a time (2**25 distances by default, so a check of one block's
    values never copies the whole matrix)."""

    def __init__(self, matrix, rows_per_block=None):
        self.matrix = np.asarray(matrix)
        if self.matrix.ndim != 2:
            raise ReIDError(f"distances must be a 2-D [queries, gallery] array, got shape {self.matrix.shape}")
        self.num_query, self.num_gallery = self.matrix.shape
        self.rows_per_block = rows_per_block or max(1, 2**25 // max(self.num_gallery, 1))

    def distances(self, start, stop):
        return self.matrix[start:stop]


def as_rows(distances, rows_per_block=None):
    """`distances` with the row interface: row objects as they are, a matrix wrapped."""
    return distances if hasattr(distances, "rows_per_block") else MatrixRows(distances, rows_per_block)

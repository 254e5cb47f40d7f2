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


def _unit_rows(features):
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


# evaluation.metric -> the feature normalisation it implies (cosine distance is computed as
# 1 - q.g of unit rows; euclidean uses the features as they are)
METRICS = {"euclidean": lambda features: features, "cosine": _unit_rows}


def _check_features(query_features, gallery_features, metric):
    if metric not in METRICS:
        raise ReIDError(f"distance metric must be one of {list(METRICS)}, got {metric!r}")
    if query_features.ndim != 2 or gallery_features.ndim != 2:
        raise ReIDError("features must be 2-D arrays [num_images, embedding_dim]")
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ReIDError(
            f"query and gallery features differ in size: {query_features.shape[1]} vs {gallery_features.shape[1]}"
        )


class QueryGalleryDistances:
    """The query x gallery distance matrix, computed a piece at a time when asked for.

    euclidean: ||q - g||_2 as sqrt(|q|^2 + |g|^2 - 2 q.g) clipped at 0; cosine: 1 - cos(q, g).
    Smaller is more similar. Distances are float32, from float64 products and sums.

    Three ways to read it, each within `memory_budget_bytes` of working memory beyond the
    features (float32 features are not copied, except cosine's unit rows):
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
        self.query_features = METRICS[metric](query_features)
        self.gallery_features = METRICS[metric](gallery_features)
        self.num_query, self.num_gallery = len(query_features), len(gallery_features)
        gallery_size = max(self.num_gallery, 1)
        self.tile_columns = min(gallery_size, max(1, budget // (self._TILE_BYTES * min(self.num_query, 1024))))
        self.tile_rows = max(1, budget // (self._TILE_BYTES * self.tile_columns))
        self.rows_per_block = max(1, budget // (self._TILE_BYTES * gallery_size))
        self.gallery_squared = np.concatenate(
            [
                np.square(self.gallery_features[start : start + 65536], dtype=np.float64).sum(axis=1)
                for start in range(0, self.num_gallery, 65536)
            ]
            or [np.zeros(0)]
        )
        # The whole gallery in float64 when it takes at most a quarter of the budget; else each
        # tile converts its slice.
        small = self.num_gallery * self.gallery_features.shape[1] * 8 <= budget // 4
        self._gallery64 = self.gallery_features.astype(np.float64) if small else None

    @property
    def shape(self):
        return self.num_query, self.num_gallery

    def __len__(self):
        return self.num_query

    def __getitem__(self, query_index):
        """The distances of one query to the whole gallery, float32 [num_gallery]."""
        return self.distances(query_index, query_index + 1)[0]

    def _gallery(self, first, last):
        if self._gallery64 is not None:
            return self._gallery64[first:last]
        return self.gallery_features[first:last].astype(np.float64)

    def _finish(self, products, query_squared, gallery_squared):
        """float64 products of the scaled queries (see `_scaled`) -> float32 distances, with as
        few passes over the tile as possible (they, not the product, dominate at scale)."""
        if self.metric == "cosine":
            products += 1.0  # 1 - q.g
            return products.astype(np.float32)
        products += query_squared  # |q|^2 + |g|^2 - 2 q.g, in float64 where it cancels
        products += gallery_squared
        squared = products.astype(np.float32)
        np.maximum(squared, 0.0, out=squared)
        return np.sqrt(squared, out=squared)

    def _scaled(self, queries):
        # -2 q (euclidean) or -q (cosine): exact scalings that save a pass over every tile.
        return queries * (-1.0 if self.metric == "cosine" else -2.0)

    def tile(self, query_start, query_stop, gallery_start, gallery_stop):
        """Distances of queries [query_start, query_stop) to gallery [gallery_start, gallery_stop)."""
        queries = self.query_features[query_start:query_stop].astype(np.float64)
        products = self._scaled(queries) @ self._gallery(gallery_start, gallery_stop).T
        query_squared = np.square(queries).sum(axis=1)[:, None]
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
        slice_size = max(1, self.tile_columns * self.tile_rows // max(len(output), 1))
        for first in range(0, self.num_gallery, slice_size):
            last = min(first + slice_size, self.num_gallery)
            output[:, first:last] = self.tile(start, stop, first, last)
        return output

    def pairs(self, query_index, columns):
        """Distances of one query to the gallery images `columns`, float32 [len(columns)]."""
        query = self.query_features[query_index].astype(np.float64)
        products = self.gallery_features[columns].astype(np.float64) @ self._scaled(query)
        return self._finish(products, np.square(query).sum(), self.gallery_squared[columns])

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


class MatrixRows:
    """A whole distance matrix behind the row interface of `QueryGalleryDistances`."""

    def __init__(self, matrix, rows_per_block=None):
        self.matrix = np.asarray(matrix)
        self.rows_per_block = rows_per_block or max(1, 2**25 // max(self.matrix.shape[1], 1))

    @property
    def shape(self):
        return self.matrix.shape

    def __len__(self):
        return len(self.matrix)

    def __getitem__(self, query_index):
        return self.matrix[query_index]

    def distances(self, start, stop):
        return self.matrix[start:stop]


def as_rows(distances):
    """`distances` with the row interface: row objects as they are, a matrix wrapped."""
    return distances if hasattr(distances, "rows_per_block") else MatrixRows(distances)

"""Search a gallery of your own images with a trained model: index, query, open-set verdict."""

from siamese_reid.search.index import GalleryIndex, load_index, model_fingerprint
from siamese_reid.search.indexing import IndexSummary, update_index
from siamese_reid.search.searching import SearchAnswer, Searcher, SearchResult, search_images

__all__ = [
    "GalleryIndex",
    "IndexSummary",
    "SearchAnswer",
    "SearchResult",
    "Searcher",
    "load_index",
    "model_fingerprint",
    "search_images",
    "update_index",
]

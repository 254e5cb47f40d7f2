"""The embedding tower and the Siamese model around it."""

from siamese_reid.model.backbones import BACKBONES, build_backbone, freeze_blocks
from siamese_reid.model.embedding import build_embedding_model, load_embedding_model
from siamese_reid.model.pooling import POOLINGS
from siamese_reid.model.siamese import BRANCHES, build_siamese_model

__all__ = [
    "BACKBONES",
    "BRANCHES",
    "POOLINGS",
    "build_backbone",
    "build_embedding_model",
    "build_siamese_model",
    "freeze_blocks",
    "load_embedding_model",
]

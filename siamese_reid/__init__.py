"""siamese-reid: person re-identification with a Siamese VGG16 and triplet losses."""

__version__ = "0.1.0"

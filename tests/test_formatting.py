"""Numbers and summaries as a person reads them (siamese_reid.formatting)."""


def test_the_ranked_distance_is_said_in_words():
    from siamese_reid.formatting import distance_in_words

    assert distance_in_words({"name": "euclidean"}) == "euclidean"
    assert distance_in_words({"name": "k_reciprocal", "k1": 20, "k2": 6}) == "k_reciprocal (k1=20, k2=6)"

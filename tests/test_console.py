"""What a person sees: progress on a terminal, plain lines in a log."""

from pathlib import Path

import numpy as np

from siamese_reid.evaluation.embeddings import extract_embeddings
from tests.conftest import write_image


def test_progress_written_to_a_log_is_plain_lines(tmp_path, capfd):
    # evaluate.py or search.py index piped into a file or a CI log: no colour codes, carriage
    # returns or backspaces, one readable line when the bar is done
    import keras

    paths = [str(tmp_path / f"{i}.png") for i in range(5)]
    for seed, path in enumerate(paths):
        write_image(Path(path), size=(16, 8), seed=seed)
    inputs = keras.Input((16, 8, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    features = extract_embeddings(model, paths, (16, 8), batch_size=2, verbose=1)
    assert features.shape == (5, 3) and np.isfinite(features).all()
    output = capfd.readouterr().out
    assert "5/5" in output
    assert not any(character in output for character in ("\x1b", "\r", "\b"))

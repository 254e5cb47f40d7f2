"""What a person sees: progress on a terminal, plain lines in a log."""

from pathlib import Path

import numpy as np

from siamese_reid.evaluation.embeddings import extract_embeddings


def test_progress_written_to_a_log_is_plain_lines(tmp_path, capfd, write_image):
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


def test_the_library_messages_read_as_print_wrote_them(shown_messages, capsys):
    # the library logs instead of printing; the entry points' handler shows each message alone,
    # as print did, and a message logged with end="" is completed by the next one
    import logging

    from siamese_reid.console import show_messages

    show_messages()  # a second call adds no second handler: every line once
    logger = logging.getLogger("siamese_reid.anything")
    logger.info("dataset summary:")
    logger.info("\nepoch 2: scoring on validation... ", extra={"end": ""})
    logger.info("rank-1 50.0%  mAP 40.0%")
    logger.debug("not shown")
    assert capsys.readouterr().out == "dataset summary:\n\nepoch 2: scoring on validation... rank-1 50.0%  mAP 40.0%\n"


def test_the_library_shows_nothing_until_asked(capsys, caplog):
    # a notebook or a service decides: without a handler nothing reaches stdout
    import logging

    logger = logging.getLogger("siamese_reid.anything")
    caplog.set_level(logging.INFO, logger="siamese_reid")
    logger.info("a note")
    assert capsys.readouterr().out == ""
    assert caplog.messages == ["a note"]

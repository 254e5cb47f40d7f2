"""Figures a user looks at: they say what they show."""

import numpy as np

from siamese_reid.data.readers import Sample
from siamese_reid.figures import plot_retrieval_examples


def test_retrieval_examples_say_they_are_a_sample_and_what_the_colours_mean(tmp_path, write_image):
    samples = []
    for index, (pid, camid) in enumerate([(1, 1), (2, 1), (1, 2), (2, 2), (3, 2)]):
        write_image(tmp_path / f"{index}.png", seed=index)
        samples.append(Sample(str(tmp_path / f"{index}.png"), pid, camid))
    query, gallery = samples[:2], samples[2:]
    distances = np.array([[0.1, 0.5, 0.9], [0.2, 0.4, 0.8]])
    figure = plot_retrieval_examples([1], query, gallery, distances, top_k=2, chosen="drawn at random (seed 0)")
    caption = figure._suptitle.get_text()
    assert "1 of 2 queries, drawn at random (seed 0)" in caption
    assert "green" in caption and "same person" in caption and "red" in caption and "another person" in caption


def test_embedding_projection_gives_every_identity_its_own_colour_and_labels_its_axes():
    from siamese_reid.figures import plot_embedding_projection

    pids = np.repeat(np.arange(1, 46), 2)  # 45 identities: more than any qualitative colour map
    points = np.random.default_rng(0).normal(size=(len(pids), 2))
    figure = plot_embedding_projection(points, pids)
    axis = figure.axes[0]
    colours = axis.collections[0].get_facecolors()
    distinct = {tuple(np.round(colour, 6)) for colour in colours}
    assert len(distinct) == 45
    # the two images of one identity share their colour
    np.testing.assert_array_equal(colours[0], colours[1])
    assert axis.get_xlabel() and axis.get_ylabel() and "45 identities" in axis.get_title()


def test_loss_figure_shows_each_loss_and_the_prefixed_collapse_indicators():
    # The strong-baseline training model has outputs triplet / id / center: Keras logs
    # triplet_loss, id_loss, center_loss and triplet_<metric> columns.
    from siamese_reid.figures import plot_loss_curves

    epochs = np.arange(3)
    history = {
        "epoch": epochs,
        "loss": np.array([3.0, 2.0, 1.0]),
        "triplet_loss": np.array([0.3, 0.2, 0.1]),
        "id_loss": np.array([2.7, 1.8, 0.9]),
        "triplet_mean_positive_distance": np.array([0.5, 0.4, 0.3]),
        "triplet_active_triplet_fraction": np.array([0.9, 0.8, 0.7]),
    }
    loss_axis, stats_axis = plot_loss_curves(history).axes
    assert [line.get_label() for line in loss_axis.get_lines()] == ["total", "triplet", "identity (cross-entropy)"]
    assert [line.get_label() for line in stats_axis.get_lines()] == [
        "mean positive distance",
        "active triplet fraction",
    ]
    np.testing.assert_array_equal(stats_axis.get_lines()[0].get_ydata(), [0.5, 0.4, 0.3])
    assert loss_axis.get_yscale() == "log"  # parts of very different sizes all visible
    assert plot_loss_curves({"epoch": epochs, "loss": np.array([0.3, 0.2, 0.0])}).axes[0].get_yscale() == "linear"


def test_loss_figure_draws_the_per_stripe_identity_losses_as_their_mean():
    from siamese_reid.figures import plot_loss_curves

    history = {
        "epoch": np.arange(2),
        "loss": np.array([9.0, 7.0]),
        "triplet_loss": np.array([0.3, 0.2]),
        "stripe_id_1_loss": np.array([6.0, 4.0]),
        "stripe_id_2_loss": np.array([5.0, 3.0]),
    }
    loss_axis = plot_loss_curves(history).axes[0]
    labels = [line.get_label() for line in loss_axis.get_lines()]
    assert labels == ["total", "triplet", "identity per stripe (mean of 2)"]
    np.testing.assert_allclose(loss_axis.get_lines()[2].get_ydata(), [5.5, 3.5])

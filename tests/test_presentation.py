"""What a person is shown of search answers (siamese_reid.search.presentation): the figure
of `search.py query --save`."""

import numpy as np


def answer_of(query_path, results, query_pid, threshold=0.5):
    from siamese_reid.search import SearchAnswer, SearchResult

    results = [SearchResult(str(path), distance, pid, None) for path, distance, pid in results]
    return SearchAnswer(str(query_path), results, results[0].distance < threshold, threshold, query_pid)


def marks(axis):
    return [patch.get_gid() for patch in axis.patches if (patch.get_gid() or "").startswith("mark-")]


def test_the_answers_figure_marks_right_and_wrong_results_and_keeps_the_query_name_end(tmp_path, write_image):
    from matplotlib.figure import Figure

    from siamese_reid.search.presentation import plot_search_answers

    for name in ("q.jpg", "a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / name, size=(32, 16))
    long_name = "camera-footage-from-the-north-entrance-2026-12-05_0007_c2s1_000451_01.jpg"
    (tmp_path / "q.jpg").rename(tmp_path / long_name)
    known = answer_of(
        tmp_path / long_name,
        [(tmp_path / "a.jpg", 0.2, 7), (tmp_path / "b.jpg", 0.4, 3), (tmp_path / "c.jpg", 0.7, 7)],
        query_pid=7,
    )
    unknown = answer_of(tmp_path / "a.jpg", [(tmp_path / "b.jpg", 0.3, None), (tmp_path / "c.jpg", 0.9, None)], None)
    figure = plot_search_answers([known, unknown])
    assert isinstance(figure, Figure)
    axes = np.array(figure.axes).reshape(2, 4)
    # same identity green, another red, whatever the distance; the threshold is not the truth
    assert [marks(axis) for axis in axes[0, 1:]] == [["mark-green"], ["mark-red"], ["mark-green"]]
    assert [patch.get_edgecolor()[:3] for axis in axes[0, 1:] for patch in axis.patches] == [
        (0.0, 0.5019607843137255, 0.0),  # matplotlib's "green"
        (1.0, 0.0, 0.0),
        (0.0, 0.5019607843137255, 0.0),
    ]
    # unknown identities: no right/wrong mark, only the accepted one framed blue
    assert [marks(axis) for axis in axes[1, 1:3]] == [["mark-blue"], []]
    query_title = axes[0, 0].get_title()
    assert query_title.replace("\n", "").startswith("camera-footage")
    assert "0007_c2s1_000451_01.jpg" in query_title.replace("\n", "")  # the end, identity and camera, is kept
    assert "…" in query_title and all(len(line) <= 26 for line in query_title.splitlines()[:2])
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == [
        "green: the query's identity (right)",
        "red: another identity (wrong)",
        "blue: identity unknown, closer than the threshold (accepted)",
    ]
    assert [handle.get_edgecolor()[:3] for handle in figure.legends[0].legend_handles] == [
        (0.0, 0.5019607843137255, 0.0),
        (1.0, 0.0, 0.0),
        (0.0, 0.0, 1.0),
    ]
    alone = plot_search_answers([unknown])
    assert [text.get_text() for text in alone.legends[0].get_texts()] == [
        "blue: identity unknown, closer than the threshold (accepted)"
    ]
    assert alone.get_suptitle().startswith("identities unknown: results are not marked right or wrong")
    assert not any(mark in ("mark-green", "mark-red") for axis in alone.axes for mark in marks(axis))


def test_a_short_query_name_is_shown_whole(tmp_path, write_image):
    from siamese_reid.search.presentation import plot_search_answers

    write_image(tmp_path / "0001_c1s1_000001_00.jpg", size=(32, 16))
    answer = answer_of(tmp_path / "0001_c1s1_000001_00.jpg", [(tmp_path / "0001_c1s1_000001_00.jpg", 0.0, 1)], 1)
    assert plot_search_answers([answer]).axes[0].get_title().splitlines()[0] == "0001_c1s1_000001_00.jpg"

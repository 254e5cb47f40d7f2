"""What a person is shown of search answers: the table `search.py query` prints and the figure
it saves."""

from pathlib import Path

from matplotlib.figure import Figure

from siamese_reid.figures import framed_image


def search_table(answers, identity_names=None):
    """What search.py query prints: per query, its verdict and top-k with distances."""
    identity_names = identity_names or {}
    lines = []
    for answer in answers:
        verdict = "match" if answer.match else "no match"
        lines.append(f"{answer.query}: {verdict} (threshold {answer.threshold:.4f})")
        for rank, result in enumerate(answer.results, start=1):
            who = "" if result.pid is None else f"  id {identity_names.get(result.pid, result.pid)}"
            camera = "" if result.camid is None else f"  cam {result.camid}"
            lines.append(f"  {rank:>3}  {result.distance:.4f}  {result.path}{who}{camera}")
    return "\n".join(lines)


# Frames of plot_search_answers: right / wrong when both identities are known, else whether
# the result was accepted; what each means is written on the figure.
SEARCH_MARKS = {
    "green": "green: the query's identity (right)",
    "red": "red: another identity (wrong)",
    "blue": "blue: identity unknown, closer than the threshold (accepted)",
}


def middle_ellipsis(text, width):
    """`text` in at most `width` characters: a longer one loses its middle to "…" and keeps
    its start and, longer, its end (where a file name carries identity, camera and frame)."""
    if len(text) <= width:
        return text
    tail = (2 * (width - 1)) // 3
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def wrapped_name(name, line_width=26, max_lines=2):
    """A file name cut into lines of `line_width` characters, at most `max_lines` of them
    (shortened in the middle beyond that)."""
    name = middle_ellipsis(name, line_width * max_lines)
    return "\n".join(name[start : start + line_width] for start in range(0, len(name), line_width))


def _mark(axis, colour):
    """A frame drawn around an image axis (an artist, so figures can be checked without pixels)."""
    from matplotlib.patches import Rectangle

    frame = Rectangle((0, 0), 1, 1, transform=axis.transAxes, fill=False, edgecolor=colour, linewidth=3)
    frame.set_gid(f"mark-{colour}")
    axis.add_patch(frame)


def plot_search_answers(answers, identity_names=None, top_k=None):
    """Each query beside its top-k gallery images, nearest first, with distances.

    A result is framed green when it shows the query's identity and red when another, if both
    identities are known (`answer.correct()`: Market-1501-style names, or an index that takes
    identities from folder names); a result of unknown identity is framed blue when it is
    closer than the threshold (accepted as the same person), and "< t" marks every accepted
    distance. A legend says what the colours that appear mean. Query file names are shown
    whole, wrapped, or shortened in the middle keeping their end.

    Args:
      answers: `SearchAnswer`s of `siamese_reid.search`.
      identity_names: pid -> name, for identities read from folder names.
      top_k: results shown per query (default: all).

    Returns:
      The matplotlib Figure.
    """
    identity_names = identity_names or {}
    top_k = top_k or max(len(answer.results) for answer in answers)
    size, rows = (128, 64), len(answers)
    figure = Figure(figsize=(1.4 * top_k + 2.2, 2.7 * rows + 0.5))
    # the query column is wider: its title holds the file name
    axes = figure.subplots(rows, top_k + 1, squeeze=False, gridspec_kw={"width_ratios": [1.6] + [1] * top_k})
    used = set()
    for row, answer in enumerate(answers):
        verdict = "match" if answer.match else "no match"
        who = "" if answer.query_pid is None else f"\nid {identity_names.get(answer.query_pid, answer.query_pid)}"
        axes[row, 0].imshow(framed_image(answer.query, None, size))
        title = f"{wrapped_name(Path(answer.query).name)}{who}\n{verdict} (t={answer.threshold:.3f})"
        axes[row, 0].set_title(title, fontsize=7)
        for column, (result, correct) in enumerate(zip(answer.results[:top_k], answer.correct(), strict=False)):
            axis = axes[row, column + 1]
            axis.imshow(framed_image(result.path, None, size))
            accepted = result.distance < answer.threshold
            colour = {True: "green", False: "red"}.get(correct, "blue" if accepted else None)
            if colour is not None:
                _mark(axis, colour)
                used.add(colour)
            name = identity_names.get(result.pid, result.pid)
            label = f"id {name}" if result.pid is not None else middle_ellipsis(Path(result.path).name, 16)
            axis.set_title(f"{column + 1}: {label}\nd={result.distance:.3f}{' < t' if accepted else ''}", fontsize=7)
        for axis in axes[row]:
            axis.axis("off")
    legend_rows = _search_legend(figure, used)
    width, height = figure.get_size_inches()
    figure.tight_layout(rect=(0, (0.1 + 0.18 * legend_rows) / height, 1, 1 - 0.3 / height))
    return figure


def _search_legend(figure, colours_used):
    """The legend of the marks that appear, in one row when the figure is wide enough for it
    (about 0.07 inch per character at 7 points), else one mark per row; returns its rows."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="none", edgecolor=colour, linewidth=2, label=meaning)
        for colour, meaning in SEARCH_MARKS.items()
        if colour in colours_used
    ]
    one_row = sum(0.07 * len(handle.get_label()) + 0.6 for handle in handles) < figure.get_size_inches()[0]
    if handles:
        columns = len(handles) if one_row else 1
        figure.legend(handles=handles, loc="lower center", ncol=columns, fontsize=7, frameon=False)
    unmarked = "green" not in colours_used and "red" not in colours_used
    caption = "identities unknown: results are not marked right or wrong; " if unmarked else ""
    figure.suptitle(f"{caption}'< t': closer than the threshold t (accepted as the same person)", fontsize=8)
    return 0 if not handles else 1 if one_row else len(handles)

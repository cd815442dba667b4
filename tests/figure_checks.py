"""What a saved figure showed, measured with matplotlib's own renderer: text boxes that intersect
or leave the figure, its size, tick labels, bars, legend, title, scatter points, error bars and
every axes' lines and title.
`capture` records it for every PNG that bench.figures writes."""
import contextlib
from pathlib import Path

import matplotlib
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from bench import figures


def undrawn_ticklabels(fig) -> set:
    """Tick labels of ticks outside their axis's view: matplotlib keeps but does not draw them."""
    out = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low):
                    out.update({id(tick.label1), id(tick.label2)})
    return out


def error_bars(ax) -> dict[str, dict[str, tuple[float, float]]]:
    """Each error-bar container's label -> {y tick label: (left end, right end)} as drawn."""
    names = {round(tick.get_loc()): tick.label1.get_text() for tick in ax.yaxis.get_major_ticks()}  # hidden ones too
    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            (segments,) = [lines.get_segments() for lines in c.lines[2]]
            out[c.get_label()] = {names[round(seg[0][1])]: (seg[0][0], seg[1][0]) for seg in segments if len(seg)}
    return out


def snapshot(fig) -> dict:
    fig.canvas.draw()  # measured at the figure's own dpi (savefig drew it at another)
    renderer = fig.canvas.get_renderer()
    hidden = undrawn_ticklabels(fig)
    texts = [t for t in fig.findobj(matplotlib.text.Text)
             if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
    # the text's own box (an annotation's extent would include its leader line)
    boxes = [(t.get_text(), matplotlib.text.Text.get_window_extent(t, renderer)) for t in texts]
    overlaps = [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
    outside = [t for t, box in boxes if box.x0 < -1 or box.y0 < -1 or box.x1 > fig.bbox.x1 + 1 or box.y1 > fig.bbox.y1 + 1]
    ax = fig.axes[0]
    return {"overlaps": overlaps, "outside": outside, "size": tuple(fig.get_size_inches()),
            "yticks": [t.get_text() for t in ax.get_yticklabels() if t.get_visible()],
            "bars": [(p.get_width(), p.get_facecolor()) for p in ax.patches],
            "legend": [t.get_text() for legend in fig.legends for t in legend.get_texts()],
            "title": ax.get_title(), "errorbars": error_bars(ax),
            "offsets": [c.get_offsets() for c in ax.collections if hasattr(c, "get_offsets")],
            "points": {c.get_label(): c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)},
            "lines": [{line.get_label(): (line.get_xdata(), line.get_ydata()) for line in a.get_lines()} for a in fig.axes],
            "titles": [a.get_title() for a in fig.axes]}


@contextlib.contextmanager
def capture(saved: dict, root: Path):
    """While open, saved[(width rounded to 0.1 inch, name)] = snapshot of each PNG written under
    `root`, its name the path from `root` without the suffix (`forgetting`, `matrix/<run>`)."""
    real_savefig, real_write = Figure.savefig, figures.write_atomic
    saving = {}

    def write_atomic(path, write, **kw):  # the file being written
        saving["name"] = path.relative_to(root).with_suffix("").as_posix()
        return real_write(path, write, **kw)

    def savefig(fig, fname, *args, **kwargs):  # the figure as saved
        real_savefig(fig, fname, *args, **kwargs)
        if kwargs.get("format") == "png":
            saved[(round(fig.get_figwidth(), 1), saving["name"])] = snapshot(fig)
    mp = pytest.MonkeyPatch()
    mp.setattr(Figure, "savefig", savefig)
    mp.setattr(figures, "write_atomic", write_atomic)
    try:
        yield saved
    finally:
        mp.undo()

"""The evaluation's figures, read back from their artists: one colour and line style per method in
every figure whatever the other methods are, the legend clear of the title and the panels, and the
intervals in the legend only where a method has them."""

from __future__ import annotations

from pathlib import Path

import matplotlib.collections
import matplotlib.pyplot as plt
import pytest

import experiment.report as report
from experiment.forecast import evaluate
from experiment.settings import EvalSettings


@pytest.fixture
def figures(monkeypatch):
    """Every figure an evaluation saves, as {file name: figure}, kept open to be read."""
    saved = {}

    def keep(fig, path, dpi):
        saved[Path(path).name] = fig
        fig.savefig(path, dpi=40)  # the file as usual, small; the figure stays open
    monkeypatch.setattr(report, "save_figure", keep)
    yield saved
    for fig in saved.values():
        plt.close(fig)


def evaluation(series_file, tmp_path, figures, name: str, baselines: list[str], samples: int = 1) -> dict:
    figures.clear()
    evaluate(EvalSettings(model="tiny-random", data=str(series_file), limit=2, horizon=5, ctx=[10, 20],
                          samples=samples, temperature=1.0 if samples > 1 else 0.0, baselines=baselines,
                          ode_evaluations=300, workers=1, out=str(tmp_path / name), ledger=str(tmp_path / "l.json"),
                          quiet=True))
    return dict(figures)


def styles(fig) -> dict[str, tuple]:
    """{label: (colour, line style)} of every labelled line in the figure's panels."""
    found = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                style = (line.get_color(), line.get_linestyle())
                assert found.setdefault(line.get_label(), style) == style, line.get_label()
    return found


def test_a_method_keeps_its_colour_and_style_in_every_figure_whatever_the_others_are(series_file, tmp_path,
                                                                                      figures):
    first = evaluation(series_file, tmp_path, figures, "a", ["persistence", "parroting"])
    second = evaluation(series_file, tmp_path, figures, "b", ["ode_fit", "parroting"])
    seen = {}
    for figs in (first, second):
        for name in ("forecasts.png", "mae_vs_horizon.png"):
            lines = styles(figs[name])
            methods = {k: v for k, v in lines.items() if k != "truth"}
            assert len(set(methods.values())) == len(methods), f"{name}: two methods drawn alike: {methods}"
            for method, style in methods.items():
                assert seen.setdefault(method, style) == style, f"{method} changes its look in {name}"
    assert set(seen) == {"model", "persistence", "parroting", "ode_fit"}


def test_the_legend_is_clear_of_the_title_and_the_panels(series_file, tmp_path, figures):
    figs = evaluation(series_file, tmp_path, figures, "a", ["persistence", "parroting"], samples=3)
    for name, fig in figs.items():
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        page = fig.bbox
        legend = fig.legends[0].get_window_extent(renderer)
        title = fig._suptitle.get_window_extent(renderer)
        assert not legend.overlaps(title), name
        assert legend.y1 < title.y0, f"{name}: the legend is above the title"
        for ax in fig.axes:
            assert not legend.overlaps(ax.get_tightbbox(renderer)), f"{name}: the legend covers a panel"
        for box in (legend, title):
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, name
        for ax in fig.axes:  # the context-end mark's label inside the page
            for text in ax.texts:
                box = text.get_window_extent(renderer)
                assert page.x0 <= box.x0 and box.x1 <= page.x1, f"{name}: {text.get_text()!r} is cut"


def legend_texts(fig) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def bands(fig) -> int:
    return sum(isinstance(c, matplotlib.collections.PolyCollection) for ax in fig.axes for c in ax.collections)


def test_the_intervals_are_in_the_legend_only_where_they_are_drawn(series_file, tmp_path, figures):
    greedy = evaluation(series_file, tmp_path, figures, "greedy", ["persistence", "parroting"])["forecasts.png"]
    assert bands(greedy) == 0
    assert "50% interval" not in legend_texts(greedy) and "90% interval" not in legend_texts(greedy)
    sampled = evaluation(series_file, tmp_path, figures, "sampled", ["persistence"], samples=3)["forecasts.png"]
    # the model's two bands in every panel: 2 systems x 2 species x 2 contexts
    assert bands(sampled) == 2 * 2 * 2 * 2
    assert legend_texts(sampled)[-2:] == ["50% interval", "90% interval"]

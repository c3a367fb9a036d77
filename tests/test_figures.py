"""The figures' layout: what a reader sees when a chart has many bars."""
import pytest

from selfsup import figures


def drawn_axis(monkeypatch, tmp_path, count: int, groups: dict | None = None, **options):
    """The axis grouped_bars draws for ``count`` names (by default of two series), caught as it is saved,
    with its (y, x) tick labels."""
    caught = {}
    save = figures._save

    def catch(figure, path):
        caught["axis"] = figure.axes[0]
        caught["ticks"] = ([t.get_text() for t in figure.axes[0].get_yticklabels()],
                           [t.get_text() for t in figure.axes[0].get_xticklabels()])
        return save(figure, path)

    monkeypatch.setattr(figures, "_save", catch)
    names = [f"a long benchmark row name {i}" for i in range(count)]
    groups = groups or {"kNN": [60.0 + i for i in range(count)], "linear": [None] + [70.0] * (count - 1)}
    path = figures.grouped_bars(tmp_path / f"{count}.png", names, groups, "top-1 (%)", "rows", **options)
    assert path.stat().st_size > 0
    return caught["axis"], caught["ticks"], names


def test_grouped_bars_stand_as_columns_while_their_names_fit_under_them(monkeypatch, tmp_path):
    axis, (_, x_labels), names = drawn_axis(monkeypatch, tmp_path, figures.HORIZONTAL_FROM - 1)
    bars = axis.patches
    assert len(bars) == 2 * len(names) - 1  # the missing value leaves a gap
    assert all(bar.get_width() == pytest.approx(0.4) for bar in bars)
    assert x_labels == names


def test_grouped_bars_lie_one_row_per_name_once_names_would_collide(monkeypatch, tmp_path):
    axis, (y_labels, _), names = drawn_axis(monkeypatch, tmp_path, figures.HORIZONTAL_FROM)
    bars = axis.patches
    assert len(bars) == 2 * len(names) - 1
    assert all(bar.get_height() == pytest.approx(0.4) for bar in bars)
    assert sorted(bar.get_width() for bar in bars)[-1] == pytest.approx(60.0 + len(names) - 1)
    assert y_labels == names
    assert axis.yaxis_inverted()  # the first name on top, as in the table beside the chart


def test_horizontal_bars_keep_their_error_bars_and_zoom_on_the_value_axis(monkeypatch, tmp_path):
    count = figures.HORIZONTAL_FROM
    axis, _, _ = drawn_axis(monkeypatch, tmp_path, count, {"kNN": [81.0 + i / 10 for i in range(count)]},
                            errors={"kNN": [0.5] * count}, zoom=True)
    assert axis.get_xlim()[0] == pytest.approx(75.0)  # a few points below the lowest bar, on the value axis
    assert axis.get_ylim()[0] > axis.get_ylim()[1]  # names top to bottom, not zoomed
    (bars,) = [container for container in axis.containers if getattr(container, "errorbar", None) is not None]
    (whiskers,) = bars.errorbar.lines[2]
    segments = whiskers.get_segments()
    assert len(segments) == count
    assert all(segment[0][1] == segment[1][1] and segment[1][0] - segment[0][0] == pytest.approx(1.0)
               for segment in segments)  # +- 0.5 along the value axis, one per bar


def test_a_bar_without_a_spread_gets_no_whisker_beside_bars_with_one(monkeypatch, tmp_path):
    axis, _, _ = drawn_axis(monkeypatch, tmp_path, 3, {"kNN": [80.0, 81.0, 82.0]}, errors={"kNN": [0.5, None, 0.25]})
    (bars,) = [container for container in axis.containers if getattr(container, "errorbar", None) is not None]
    (whiskers,) = bars.errorbar.lines[2]
    lengths = sorted(abs(s[1][1] - s[0][1]) for s in whiskers.get_segments() if len(s) == 2)
    assert lengths == pytest.approx([0.5, 1.0])  # one seed, one number: nothing drawn, not a zero-width cap


def test_a_reference_is_a_dashed_line_in_its_series_colour_and_an_unknown_series_is_refused(monkeypatch, tmp_path):
    count = figures.HORIZONTAL_FROM
    axis, _, _ = drawn_axis(monkeypatch, tmp_path, count, references={"linear": 84.7}, reference_name="raw pixels")
    (line,) = axis.get_lines()
    assert line.get_linestyle() == "--" and list(line.get_xdata()) == [84.7, 84.7]  # across the horizontal bars
    linear_bars = next(bars for bars in axis.containers if bars.get_label() == "linear")
    assert line.get_color() == pytest.approx(linear_bars.patches[0].get_facecolor())
    assert "raw pixels, linear" in [text.get_text() for text in axis.get_legend().get_texts()]
    with pytest.raises(ValueError, match="not drawn"):
        figures.grouped_bars(tmp_path / "x.png", ["a"], {"kNN": [1.0]}, "top-1", "t", references={"linear": 2.0})

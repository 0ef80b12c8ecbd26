"""plots.py: one colour per model in every plot, a line style per variant, the chance line, the
region bar chart."""

import math

import pytest
from matplotlib import colors
from matplotlib import image as mpimg
from matplotlib import pyplot as plt
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.patches import Rectangle

import plots


def _lines(figure):
    """label -> (colour as RGBA, line style, y values) of the plotted lines."""
    [axis] = figure.axes
    return {line.get_label(): (colors.to_rgba(line.get_color()), line.get_linestyle(),
                               list(line.get_ydata())) for line in axis.get_lines()}


def test_a_model_has_one_colour_in_every_plot_and_variants_a_line_style():
    alignment = plots.per_layer_figure(
        {"pretrained": {0: 0.1, 1: 0.2}, "epoch 4": {0: 0.3, 1: 0.4}, "final": {0: 0.2, 1: 0.1}},
        "cc_norm", "alignment")
    reliance = plots.per_layer_figure(
        {("final", "powspec"): {0: 50, 1: None}, ("epoch 4", "powspec"): {0: 40, 1: 30},
         ("final", "phonemes"): {0: 20, 1: 25}}, "drop (%)", "reliance")
    first, second = _lines(alignment), _lines(reliance)
    for model in ("final", "epoch 4"):
        colour = first[model][0]
        assert colour == colors.to_rgba(plots.model_colour(model))
        assert all(line[0] == colour for label, line in second.items()
                   if label.startswith(f"{model},"))
    assert first["pretrained"][0] != first["final"][0] != first["epoch 4"][0]
    assert second["final, powspec"][1] == second["epoch 4, powspec"][1] == "-"
    assert second["final, phonemes"][1] == "--"
    assert second["final, powspec"][2][0] == 50 and math.isnan(second["final, powspec"][2][1])
    plt.close("all")


def test_model_colour_does_not_depend_on_what_else_is_plotted():
    assert plots.model_colour("pretrained") == "tab:blue"
    assert plots.model_colour("final") == "tab:orange"
    assert plots.model_colour("epoch 3") == plots.model_colour("epoch 3")
    assert plots.model_colour("epoch 3") in plots.OTHER_COLOURS


def test_long_titles_are_wrapped_to_fit():
    title = ("Reliance on low-level features (higher: more reliant), UTS01, wheretheressmoke, "
             "127 voxels with NC > 0.4")
    figure = plots.per_layer_figure({"final": {1: 0.6}}, "drop", title)
    shown = figure.axes[0].get_title()
    assert shown.replace("\n", " ") == title
    assert max(len(line) for line in shown.splitlines()) <= plots.TITLE_CHARS
    plt.close(figure)


def test_chance_line_and_png(tmp_path):
    figure = plots.per_layer_figure({"final": {1: 0.6}}, "F1", "probe", chance=0.25)
    lines = _lines(figure)
    assert lines["chance"][1] == "--" and lines["chance"][2] == [0.25, 0.25]
    plt.close(figure)
    plots.plot_per_layer(tmp_path / "p.png", {"final": {1: 0.6}}, "F1", "probe", chance=0.25)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _bars(axis):
    """model label -> [(x centre, height, colour as RGBA)] of the bars in a panel."""
    return {container.get_label(): [(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                                     colors.to_rgba(bar.get_facecolor())) for bar in container]
            for container in axis.containers if isinstance(container, BarContainer)}


def _error_bars(axis):
    """x -> (low, high) of the error bars in a panel."""
    extents = {}
    for container in axis.containers:
        if isinstance(container, ErrorbarContainer):
            for (x, low), (_, high) in container.lines[2][0].get_segments():
                extents[round(float(x), 9)] = (float(low), float(high))
    return extents


REGIONS = {
    "pretrained": {3: {"AC": 0.2, "STS": 0.1, "IFG": None},
                   7: {"AC": 0.25, "STS": 0.15, "IFG": 0.05}},
    "final": {3: {"AC": 0.3, "STS": None, "IFG": 0.1},
              7: {"AC": 0.35, "STS": 0.2, "IFG": 0.12}},
    "epoch 3": {3: {"AC": 0.22, "STS": 0.12, "IFG": 0.02},
                7: {"AC": 0.28, "STS": 0.18, "IFG": -0.04}},
}
REGION_INTERVALS = {
    "pretrained": {3: {"AC": (0.15, 0.3), "STS": None, "IFG": (0.0, 0.1)},
                   7: {"AC": (0.2, 0.3), "STS": (0.1, 0.2), "IFG": (0.0, 0.1)}},
    "final": {3: {"AC": (0.25, 0.32), "STS": (0.1, 0.2), "IFG": (0.05, 0.2)}},
    "epoch 3": {7: {"AC": (0.2, 0.3), "IFG": (-0.1, 0.01)}},
}


def test_region_bars_one_panel_per_layer_a_bar_per_model_and_region():
    figure = plots.regions_figure(REGIONS, "mean cc_norm", "alignment by region",
                                  REGION_INTERVALS)
    assert len(figure.axes) == 2
    assert [axis.get_title() for axis in figure.axes] == ["layer 3", "layer 7"]
    assert figure.axes[0].get_shared_y_axes().joined(*figure.axes)
    width = 0.8 / 3
    for axis, layer in zip(figure.axes, (3, 7)):
        assert [label.get_text() for label in axis.get_xticklabels()] == ["AC", "STS", "IFG"]
        bars = _bars(axis)
        assert list(bars) == ["pretrained", "final", "epoch 3"]
        patches = [patch for patch in axis.patches if isinstance(patch, Rectangle)]
        expected = [(model, region, value) for model, by_layer in REGIONS.items()
                    for region, value in by_layer[layer].items() if value is not None]
        assert len(patches) == len(expected) == sum(len(shown) for shown in bars.values())
        for index, model in enumerate(REGIONS):
            offset = (index - 1) * width
            shown = [(position + offset, value) for position, value
                     in enumerate(REGIONS[model][layer].values()) if value is not None]
            assert [x for x, _, _ in bars[model]] == pytest.approx([x for x, _ in shown])
            assert [h for _, h, _ in bars[model]] == pytest.approx([h for _, h in shown])
            assert all(colour == colors.to_rgba(plots.model_colour(model))
                       for _, _, colour in bars[model])
        assert all(math.isclose(bar.get_width(), width) for bar in patches)
    # error bars where both the value and the interval are defined
    first, second = (_error_bars(axis) for axis in figure.axes)
    assert sorted(first) == pytest.approx([-width, 0, 2])
    assert first[round(-width, 9)] == pytest.approx((0.15, 0.3))
    assert first[0.0] == pytest.approx((0.25, 0.32))
    assert first[2.0] == pytest.approx((0.05, 0.2))
    assert second[round(-width, 9)] == pytest.approx((0.2, 0.3))
    assert second[round(1 - width, 9)] == pytest.approx((0.1, 0.2))
    assert second[round(2 - width, 9)] == pytest.approx((0.0, 0.1))
    assert second[round(width, 9)] == pytest.approx((0.2, 0.3))
    assert second[round(2 + width, 9)] == pytest.approx((-0.1, 0.01))
    assert len(second) == 5
    [legend] = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == list(REGIONS)
    assert [colors.to_rgba(handle.get_facecolor()) for handle in legend.legend_handles] == [
        colors.to_rgba(plots.model_colour(model)) for model in REGIONS]
    assert all(axis.get_legend() is None for axis in figure.axes)
    assert figure.axes[0].get_ylabel() == "mean cc_norm" and figure.axes[1].get_ylabel() == ""
    assert figure.get_suptitle() == "alignment by region"
    plt.close(figure)


def test_error_bars_are_the_intervals_also_when_they_exclude_the_value():
    """A bootstrap percentile interval can miss the value it is drawn beside (few voxels, a
    skewed resampling distribution): the bar is the interval, in both figures."""
    figure = plots.regions_figure({"final": {1: {"AC": 0.5, "STS": 0.1}}}, "cc_norm", "t",
                                  {"final": {1: {"AC": (0.6, 0.7), "STS": (-0.2, 0.0)}}})
    extents = _error_bars(figure.axes[0])
    assert extents[0.0] == pytest.approx((0.6, 0.7))
    assert extents[1.0] == pytest.approx((-0.2, 0.0))
    plt.close(figure)
    figure = plots.per_layer_figure({"final": {1: 0.5, 2: 0.1}}, "cc_norm", "t",
                                    intervals={"final": {1: (0.6, 0.7), 2: (-0.2, 0.0)}})
    extents = _error_bars(figure.axes[0])
    assert extents[1.0] == pytest.approx((0.6, 0.7))
    assert extents[2.0] == pytest.approx((-0.2, 0.0))
    plt.close(figure)


def test_region_regions_are_the_union_in_first_seen_order_and_rotated_when_many():
    values = {"pretrained": {2: {"A1": 0.1, "A2": 0.2}},
              "final": {2: {"A2": 0.3, "B": 0.1, "C": None, "D": 0.4}}}
    figure = plots.regions_figure(values, "cc_norm", "t")
    [axis] = figure.axes
    labels = axis.get_xticklabels()
    assert [label.get_text() for label in labels] == ["A1", "A2", "B", "C", "D"]
    assert all(30 <= label.get_rotation() <= 45 for label in labels)
    bars = _bars(axis)
    assert [x for x, _, _ in bars["pretrained"]] == pytest.approx([-0.2, 0.8])
    assert [x for x, _, _ in bars["final"]] == pytest.approx([1.2, 2.2, 4.2])
    assert _error_bars(axis) == {}
    plt.close(figure)
    few = plots.regions_figure({"final": {2: {"AC": 0.1}}}, "cc_norm", "t")
    assert few.axes[0].get_xticklabels()[0].get_rotation() == 0
    plt.close(few)


def test_region_layers_wrap_to_rows_of_four():
    values = {"pretrained": {layer: {"AC": 0.1 * layer} for layer in range(5)},
              "final": {layer: {"AC": 0.2} for layer in (4, 0, 1, 2, 3)}}
    figure = plots.regions_figure(values, "cc_norm", "t")
    assert len(figure.axes) == 5
    rows = [axis.get_subplotspec().rowspan.start for axis in figure.axes]
    columns = [axis.get_subplotspec().colspan.start for axis in figure.axes]
    assert rows == [0, 0, 0, 0, 1] and columns == [0, 1, 2, 3, 0]
    assert [axis.get_title() for axis in figure.axes] == [f"layer {k}" for k in range(5)]
    assert [axis.get_ylabel() for axis in figure.axes] == ["cc_norm", "", "", "", "cc_norm"]
    assert all(len(_bars(axis)) == 2 for axis in figure.axes)
    plt.close(figure)


def test_region_png(tmp_path):
    path = tmp_path / "regions.png"
    plots.plot_regions(path, REGIONS, "mean cc_norm", "alignment by region", REGION_INTERVALS)
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

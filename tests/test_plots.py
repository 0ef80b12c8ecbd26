"""plots.py: one colour per model in every plot, a line style per variant, the chance line."""

import math

from matplotlib import colors
from matplotlib import pyplot as plt

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

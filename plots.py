"""Figures of results: one PNG per plot, written atomically.

A model has the same colour in every plot (``model_colour``: fixed for "pretrained" and
"final", from the label's digest otherwise), so that alignment, reliance and probe plots can
be read side by side; a variant of a model (e.g. the feature set regressed out) is a line
style.
"""

import itertools
import textwrap

import run_utils

FIXED_COLOURS = {"pretrained": "tab:blue", "final": "tab:orange"}
OTHER_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan", "tab:gray")
LINE_STYLES = ("-", "--", ":", "-.")
TITLE_CHARS = 64  # longer titles are wrapped to fit the figure
DODGE = 0.06  # layers between the error bars of neighbouring series


def model_colour(label):
    """The matplotlib colour of a model label, the same in every plot."""
    if label in FIXED_COLOURS:
        return FIXED_COLOURS[label]
    return OTHER_COLOURS[int(run_utils.digest(label), 16) % len(OTHER_COLOURS)]


def plot_per_layer(path, series, ylabel, title, chance=None, intervals=None):
    """Write ``per_layer_figure(series, ylabel, title, chance, intervals)`` as a PNG at
    ``path``."""
    _save(path, per_layer_figure(series, ylabel, title, chance, intervals))


def _save(path, figure):
    from matplotlib import pyplot as plt

    with run_utils.atomic_output(path, overwrite=True) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def per_layer_figure(series, ylabel, title, chance=None, intervals=None):
    """A figure of one line per series, value against layer.

    Parameters
    ----------
    series : dict key -> {layer: value}; a key is a model label, or a (model label, variant)
        tuple: the colour follows the model (``model_colour``), the line style the variant
        (in order of first appearance). None values leave a gap.
    chance : float or None; drawn as a dashed grey line labelled "chance".
    intervals : None, or dict key (as in ``series``) -> {layer: (low, high)}: error bars.
    """
    plt = _pyplot()
    variants = {}
    styles = itertools.cycle(LINE_STYLES)
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for index, (key, values) in enumerate(series.items()):
        model, variant = key if isinstance(key, tuple) else (key, None)
        if variant not in variants:
            variants[variant] = next(styles)
        layers = sorted(values)
        axis.plot(layers, [float("nan") if values[k] is None else values[k] for k in layers],
                  marker="o", color=model_colour(model), linestyle=variants[variant],
                  label=model if variant is None else f"{model}, {variant}")
        bars = {k: v for k, v in (intervals or {}).get(key, {}).items()
                if values.get(k) is not None}
        if bars:  # side by side, so that the bars of several series at a layer stay apart
            shown = sorted(bars)
            middle = [values[k] for k in shown]
            dodge = DODGE * (index - (len(series) - 1) / 2)
            below = [m - bars[k][0] for k, m in zip(shown, middle)]
            above = [bars[k][1] - m for k, m in zip(shown, middle)]
            axis.errorbar([k + dodge for k in shown], middle, yerr=[below, above], fmt="none",
                          ecolor=model_colour(model), capsize=3, linewidth=1)
    axis.set_xticks(sorted({layer for values in series.values() for layer in values}))
    axis.axhline(0.0, color="grey", linewidth=0.5)
    if chance is not None:
        axis.axhline(chance, color="grey", linestyle="--", linewidth=1.0, label="chance")
    axis.set_xlabel("layer (hidden-state index)")
    axis.set_ylabel(ylabel)
    axis.set_title(_wrapped(title), fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_data_efficiency(path, curves, ylabel, title):
    """Write ``data_efficiency_figure(curves, ylabel, title)`` as a PNG at ``path``."""
    _save(path, data_efficiency_figure(curves, ylabel, title))


def data_efficiency_figure(curves, ylabel, title):
    """A panel per layer, one line per model: value against the number of training rows.

    ``curves``: model label -> {layer: {training rows: value}}; None values leave a gap."""
    plt = _pyplot()
    layers = sorted({layer for by_layer in curves.values() for layer in by_layer})
    columns = min(len(layers), 4)
    rows = -(-len(layers) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns + 0.6, 2.8 * rows + 0.8),
                                squeeze=False, sharey=True)
    for axis, layer in zip(axes.flat, layers):
        for model, by_layer in curves.items():
            points = sorted(by_layer.get(layer, {}).items())
            axis.plot([n for n, _ in points],
                      [float("nan") if v is None else v for _, v in points], marker="o",
                      color=model_colour(model), label=model)
        axis.axhline(0.0, color="grey", linewidth=0.5)
        axis.set_title(f"layer {layer}", fontsize=9)
        axis.set_xlabel("training TRs")
    for axis in axes.flat[len(layers):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(_wrapped(title), fontsize=10)
    figure.tight_layout()
    return figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _wrapped(title):
    return "\n".join(textwrap.wrap(title, TITLE_CHARS))

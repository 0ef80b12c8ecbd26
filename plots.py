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


def model_colour(label):
    """The matplotlib colour of a model label, the same in every plot."""
    if label in FIXED_COLOURS:
        return FIXED_COLOURS[label]
    return OTHER_COLOURS[int(run_utils.digest(label), 16) % len(OTHER_COLOURS)]


def plot_per_layer(path, series, ylabel, title, chance=None):
    """Write ``per_layer_figure(series, ylabel, title, chance)`` as a PNG at ``path``."""
    from matplotlib import pyplot as plt

    figure = per_layer_figure(series, ylabel, title, chance)
    with run_utils.atomic_output(path, overwrite=True) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)


def per_layer_figure(series, ylabel, title, chance=None):
    """A figure of one line per series, value against layer.

    Parameters
    ----------
    series : dict key -> {layer: value}; a key is a model label, or a (model label, variant)
        tuple: the colour follows the model (``model_colour``), the line style the variant
        (in order of first appearance). None values leave a gap.
    chance : float or None; drawn as a dashed grey line labelled "chance".
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    variants = {}
    styles = itertools.cycle(LINE_STYLES)
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for key, values in series.items():
        model, variant = key if isinstance(key, tuple) else (key, None)
        if variant not in variants:
            variants[variant] = next(styles)
        layers = sorted(values)
        axis.plot(layers, [float("nan") if values[k] is None else values[k] for k in layers],
                  marker="o", color=model_colour(model), linestyle=variants[variant],
                  label=model if variant is None else f"{model}, {variant}")
    axis.set_xticks(sorted({layer for values in series.values() for layer in values}))
    axis.axhline(0.0, color="grey", linewidth=0.5)
    if chance is not None:
        axis.axhline(chance, color="grey", linestyle="--", linewidth=1.0, label="chance")
    axis.set_xlabel("layer (hidden-state index)")
    axis.set_ylabel(ylabel)
    axis.set_title("\n".join(textwrap.wrap(title, TITLE_CHARS)), fontsize=10)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure

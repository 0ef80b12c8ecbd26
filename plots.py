"""Figures of results: one PNG per plot, written atomically.

A model has the same colour in every plot (``model_colour``: fixed for "pretrained" and
"final", from the label's digest otherwise), so that alignment, reliance and probe plots can
be read side by side; a variant of a model (e.g. the feature set regressed out) is a line
style.
"""

import itertools
import math
import textwrap

import numpy as np

import run_utils

FIXED_COLOURS = {"pretrained": "tab:blue", "final": "tab:orange"}
OTHER_COLOURS = ("tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan", "tab:gray")
LINE_STYLES = ("-", "--", ":", "-.")
TITLE_CHARS = 64  # longer titles are wrapped to fit the figure
DODGE = 0.06  # layers between the error bars of neighbouring series
REGION_COLUMNS = 4  # panels (layers) a row of a region bar chart
REGION_GROUP = 0.8  # of a unit: the width of a group of bars (the models at a region)
REGION_PANEL_MAX = 6.0  # inches: the widest panel of a region bar chart


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
            dodge = DODGE * (index - (len(series) - 1) / 2)
            interval_bars(axis, [k + dodge for k in sorted(bars)],
                          [bars[k] for k in sorted(bars)], model_colour(model))
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


def interval_bars(axis, positions, intervals, colour):
    """Capped vertical bars from each interval's low to its high end, at ``positions``. A
    bootstrap percentile interval need not contain the value it is drawn beside, so the bars
    are not drawn relative to the value."""
    low, high = np.array(intervals, dtype=float).T
    axis.errorbar(positions, (low + high) / 2, yerr=(high - low) / 2, fmt="none",
                  ecolor=colour, capsize=3, linewidth=1)


def plot_curves_per_layer(path, curves, xlabel, ylabel, title, log_x=False):
    """Write ``curves_per_layer_figure(...)`` as a PNG at ``path``."""
    _save(path, curves_per_layer_figure(curves, xlabel, ylabel, title, log_x))


def curves_per_layer_figure(curves, xlabel, ylabel, title, log_x=False):
    """A panel per layer, one line per model: value against x (the training rows of the data
    efficiency, the penalties of the ridge's grid).

    ``curves``: model label -> {layer: {x: value}}; None values leave a gap."""
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
        axis.set_xlabel(xlabel)
        if log_x:
            axis.set_xscale("log")
    for axis in axes.flat[len(layers):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=8)
    figure.suptitle(_wrapped(title), fontsize=10)
    figure.tight_layout()
    return figure


def plot_training_curves(path, runs, title):
    """Write ``training_curves_figure(runs, title)`` as a PNG at ``path``."""
    _save(path, training_curves_figure(runs, title))


def training_curves_figure(runs, title):
    """Two panels over the epochs: the training (solid) and validation (dashed) loss, and the
    validation correlation; a colour per run, a ring on the epoch it keeps.

    ``runs``: name -> (its ``metrics.jsonl`` lines, the epoch kept or None)."""
    plt = _pyplot()
    figure, (losses, correlations) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    for name, (metrics, kept) in runs.items():
        colour = model_colour(name)
        epochs = [line["epoch"] for line in metrics]
        losses.plot(epochs, [line["train_loss"] for line in metrics], color=colour,
                    label=f"{name}, training")
        losses.plot(epochs, [line["val_loss"] for line in metrics], color=colour,
                    linestyle="--", label=f"{name}, validation")
        correlations.plot(epochs, [line["val_corr"] for line in metrics], color=colour,
                          marker="o", markersize=3, label=name)
        chosen = [line for line in metrics if line["epoch"] == kept]
        for axis, key in ((losses, "val_loss"), (correlations, "val_corr")):
            axis.scatter([line["epoch"] for line in chosen], [line[key] for line in chosen],
                         s=80, facecolors="none", edgecolors=colour, zorder=3)
    from matplotlib.ticker import MaxNLocator

    losses.set_ylabel("loss (MSE)")
    correlations.set_ylabel("validation correlation")
    for axis in (losses, correlations):
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize=7)
    figure.suptitle(_wrapped(title), fontsize=10)
    figure.tight_layout()
    return figure


def plot_regions(path, values, ylabel, title, intervals=None):
    """Write ``regions_figure(values, ylabel, title, intervals)`` as a PNG at ``path``."""
    _save(path, regions_figure(values, ylabel, title, intervals))


def regions_figure(values, ylabel, title, intervals=None):
    """A panel per layer, a group of bars per brain region, a bar per model in each group.

    Parameters
    ----------
    values : dict model label -> {layer: {region: value}}; the order of first appearance of
        the models, layers and regions (the union over models) is the display order. A None
        (or NaN, or absent) value leaves its bar's slot empty.
    ylabel : str; on the first panel of each row.
    title : str; wrapped to ``TITLE_CHARS`` and shown above all panels.
    intervals : None, or the same nesting as ``values`` with (low, high) or None: black error
        bars from low to high (``interval_bars``), drawn where both the value and its
        interval are defined.

    Returns
    -------
    matplotlib.figure.Figure; at most ``REGION_COLUMNS`` panels a row (sharing the y axis),
    more layers wrap to further rows; the colour of a model is ``model_colour``, shown in one
    figure legend below the panels.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    models = list(values)
    layers = list(dict.fromkeys(layer for by_layer in values.values() for layer in by_layer))
    regions = list(dict.fromkeys(region for by_layer in values.values()
                                 for by_region in by_layer.values() for region in by_region))
    if not layers or not regions:
        raise ValueError("regions_figure: no layers or no regions to plot")
    columns = min(len(layers), REGION_COLUMNS)
    rows = -(-len(layers) // columns)
    panel = min(REGION_PANEL_MAX, max(3.0, 0.6 * len(regions) * max(1.0, len(models) / 2)))
    size = (max(6.4, panel * columns + 0.6), 3.2 * rows + 1.0)  # 6.4: a wrapped title fits
    legend_columns = min(len(models), max(1, int(size[0] // 1.8)))
    legend_rows = -(-len(models) // legend_columns)
    size = (size[0], size[1] + 0.3 * legend_rows)
    figure, axes = plt.subplots(rows, columns, squeeze=False, sharey=True, figsize=size)
    width = REGION_GROUP / len(models)
    rotated = len(regions) > 3
    for axis, layer in zip(axes.flat, layers):
        for index, model in enumerate(models):
            offset = (index - (len(models) - 1) / 2) * width
            by_region = values[model].get(layer) or {}
            shown = [(position, region, by_region[region])
                     for position, region in enumerate(regions)
                     if _defined(by_region.get(region))]
            if not shown:
                continue
            axis.bar([position + offset for position, _, _ in shown],
                     [value for _, _, value in shown], width=width, color=model_colour(model),
                     label=model)
            limits = ((intervals or {}).get(model) or {}).get(layer) or {}
            bars = [(position + offset, value, limits[region])
                    for position, region, value in shown if limits.get(region) is not None]
            if bars:
                interval_bars(axis, [x for x, _, _ in bars], [limits for _, _, limits in bars],
                              "black")
        axis.axhline(0.0, color="grey", linewidth=0.5)
        axis.set_xticks(range(len(regions)), regions, rotation=35 if rotated else 0,
                        ha="right" if rotated else "center", fontsize=8)
        axis.set_xlim(-0.5, len(regions) - 0.5)
        axis.set_title(f"layer {layer}", fontsize=9)
    for axis in axes.flat[len(layers):]:
        axis.remove()
    for axis in axes[:, 0]:
        axis.set_ylabel(ylabel)
    # one legend for all panels, in a band below them, where it hides no bar
    figure.legend(handles=[Patch(color=model_colour(model), label=model) for model in models],
                  loc="lower center", ncol=legend_columns, fontsize=8, frameon=False)
    figure.suptitle(_wrapped(title), fontsize=10)
    figure.tight_layout(rect=(0.0, (0.3 * legend_rows + 0.05) / size[1], 1.0, 1.0))
    return figure


PART_STYLES = {  # a part of the explained variance: its bar drawn in the model's colour as
    "unique to the layer": {"alpha": 1.0},
    "shared": {"alpha": 0.45},
    "unique to the low-level set": {"alpha": 0.15, "hatch": "///"}}


def plot_partition(path, values, title):
    """Write ``partition_figure(values, title)`` as a PNG at ``path``."""
    _save(path, partition_figure(values, title))


def partition_figure(values, title):
    """Stacked bars of variance partitioning: a panel per (row, column) key, a group of bars
    per layer, a bar per model stacking its three parts (``PART_STYLES``, in order; positive
    parts up from 0, negative ones down).

    Parameters
    ----------
    values : dict (row name, column name) -> {model label: {layer: (3,) parts}}; a row per
        low-level set and a column per region, say, in order of first appearance. A part that
        is None or NaN is left out.
    title : str; wrapped to ``TITLE_CHARS`` and shown above all panels.

    Returns
    -------
    matplotlib.figure.Figure, panels sharing the y axis, one legend of models and parts below.
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    rows = list(dict.fromkeys(row for row, _ in values))
    columns = list(dict.fromkeys(column for _, column in values))
    models = list(dict.fromkeys(model for cell in values.values() for model in cell))
    if not values:
        raise ValueError("partition_figure: nothing to plot")
    size = (max(6.4, 3.2 * len(columns) + 0.6), 2.8 * len(rows) + 1.6)
    figure, axes = plt.subplots(len(rows), len(columns), squeeze=False, sharey=True,
                                figsize=size)
    width = REGION_GROUP / len(models)
    for (row, column), cell in values.items():
        axis = axes[rows.index(row), columns.index(column)]
        layers = sorted({layer for by_layer in cell.values() for layer in by_layer})
        for index, model in enumerate(models):
            offset = (index - (len(models) - 1) / 2) * width
            for position, layer in enumerate(layers):
                parts = (cell.get(model) or {}).get(layer)
                up = down = 0.0
                for value, style in zip(parts if parts is not None else (),
                                        PART_STYLES.values()):
                    if not _defined(value):
                        continue
                    bottom = up if value >= 0 else down
                    axis.bar(position + offset, value, width, bottom=bottom,
                             color=model_colour(model), edgecolor=model_colour(model),
                             linewidth=0.6, **style)
                    if value >= 0:
                        up += value
                    else:
                        down += value
        axis.axhline(0.0, color="grey", linewidth=0.5)
        axis.set_xticks(range(len(layers)), [str(layer) for layer in layers], fontsize=8)
        axis.set_title(f"{column}, {row}", fontsize=9)
        axis.set_xlabel("layer", fontsize=8)
    for axis in axes[:, 0]:
        axis.set_ylabel("explained variance (share)")
    handles = [Patch(color=model_colour(model), label=model) for model in models]
    handles += [Patch(facecolor=(0.3, 0.3, 0.3, style["alpha"]), edgecolor="0.3",
                      hatch=style.get("hatch"), label=part)
                for part, style in PART_STYLES.items()]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8,
                  frameon=False)
    figure.suptitle(_wrapped(title), fontsize=10)
    legend_rows = -(-len(handles) // 4)
    figure.tight_layout(rect=(0.0, (0.3 * legend_rows + 0.05) / size[1], 1.0, 1.0))
    return figure


def _defined(value):
    return value is not None and not math.isnan(value)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _wrapped(title):
    return "\n".join(textwrap.wrap(title, TITLE_CHARS))

"""Figures of results: one PNG per plot, written atomically."""

import run_utils


def plot_per_layer(path, series, ylabel, title):
    """A PNG of one line per model: ``series`` maps model label -> {layer: value}."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        axis.plot(list(values), list(values.values()), marker="o", label=label)
    axis.set_xticks(sorted({layer for values in series.values() for layer in values}))
    axis.axhline(0.0, color="grey", linewidth=0.5)
    axis.set_xlabel("layer (hidden-state index)")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    with run_utils.atomic_output(path, overwrite=True) as tmp:
        figure.savefig(tmp, dpi=120)
    plt.close(figure)

"""Training curves: the history of one or several runs (loss, accuracy, every eval set, lr), and learning-rate schedules.

`hist_plot_split` reads `checkpoints/<stem>_hist.json` files (several files are one run continued) or a history
dict, splits the epochs into the schedule's plans (`epochs`, drawn as dashed lines labelled by `names`) and draws
four panels: loss, accuracy, the eval sets and the learning rate. The minimum loss and every maximum accuracy are
marked with their value. Calling it again with the returned `axes` and another `fig_label` draws another run on the
same panels, side by side. Needs matplotlib (`pip install keras_insightface[plot]`).

Usage:
    from keras_insightface import plot
    axes, last = plot.hist_plot_split("checkpoints/TT_mobilenet_hist.json", [5, 5, 40], ["S16", "S32", "S64"], fig_label="mobilenet")
    axes, _ = plot.hist_plot_split("checkpoints/TT_r34_hist.json", [5, 5, 40], axes=axes, fig_label="r34", save="compare.png")
    plot.lr_schedule_plot(lr_base=0.1, lr_decay=0.1, lr_decay_steps=[20, 30], epochs=40, save="lr.png")
    plot.choose_accuracy(glob.glob("checkpoints/*_hist.json"), metric_key="agedb_30")   # text tables, no matplotlib

Command line (`python plot.py`, `keras-insightface-plot`): the curves of one or more runs, side by side, into one PNG
named after the runs beside the first history file (an existing figure is kept unless --overwrite):
    python plot.py checkpoints/TT_mobilenet_hist.json checkpoints/TT_r34_hist.json -e 5 5 40 -n S16 S32 S64
"""
import argparse
import json
import os
import sys

import numpy as np

from . import cli, io_utils

NOT_CURVES = ("loss", "accuracy", "lr", "epoch")
EVALS_NAME = ["lfw", "cfp_fp", "agedb_30", "IJBB", "IJBC"]


def _pyplot():
    matplotlib = cli.require("matplotlib", "plot", "plotting")
    if not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")  # no screen: draw to files only
    import matplotlib.pyplot as plt

    return plt


def load_histories(history):
    """One history dict from a dict, a `_hist.json` path, or a list of paths (one run, continued file after file)."""
    if isinstance(history, dict):
        return {key: list(values) for key, values in history.items()}
    paths = [history] if isinstance(history, (str, os.PathLike)) else list(history)
    merged = {}
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError("{}: no such history file".format(path))
        with open(path, "r", encoding="utf-8") as ff:
            try:
                loaded = json.load(ff)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError("{}: not a JSON history file ({})".format(path, error)) from error
        if not isinstance(loaded, dict) or not all(isinstance(values, list) for values in loaded.values()):
            raise ValueError("{}: not a history file; expected a JSON object of per-epoch lists, as Train's <stem>_hist.json".format(path))
        for key, values in loaded.items():
            merged.setdefault(key, []).extend(values)
    return merged


def save_figure(fig, path):
    """Save a figure atomically (format from the extension); an earlier file is replaced only once the new one is whole.

    Usage: save_figure(axes[0].figure, "curves.png")
    """
    with io_utils.atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


def split_by_plans(values, epochs):
    """The values of each plan: `epochs` are the plan lengths (None: one plan).  Usage: split_by_plans(v, [5, 40])"""
    if not epochs:
        return [list(values)]
    bounds = np.cumsum([0, *epochs])
    return [list(values[start:end]) for start, end in zip(bounds[:-1], bounds[1:]) if start < len(values)]


def _curve(ax, values, init_epoch, label=None, peak=None):
    """Plot `values` at epochs init_epoch + 1 ...; mark the peak (np.argmin / np.argmax) with its value."""
    points = [(init_epoch + 1 + index, value) for index, value in enumerate(values) if value is not None]
    if not points:
        return
    xx, yy = zip(*points)
    ax.plot(xx, yy, label=label)
    if peak is not None:
        best = int(peak(yy))
        ax.scatter(xx[best], yy[best], marker="v", color="r")
        ax.text(xx[best], yy[best], "{:.4f}".format(yy[best]), va="bottom", ha="right", fontsize=8, rotation=-30)


def _plan_marks(ax, plan_lengths, names, init_epoch):
    ymin, ymax = ax.get_ylim()
    start = init_epoch + 1
    for name, length in zip(names or [], plan_lengths):
        ax.axvline(start, color="k", linestyle="--", linewidth=0.8)
        ax.text(start + 0.05 * length, ymin + 0.2 * (ymax - ymin), name, va="bottom", rotation=-90, fontsize=8)
        start += length


def hist_plot_split(history, epochs=None, names=None, customs=None, save="", axes=None, init_epoch=0, fig_label=None, limit_loss_max=1e5):
    """Draw a run's history: loss, accuracy, eval sets (`customs`, default every other key) and lr; returns (axes, last values).

    history: a dict, a `_hist.json` path or a list of them; epochs / names: the plans' lengths and names; save: an image
    path ("" saves next to the (last) history file as .png, None saves nothing); axes: the 4 axes of an earlier call to
    draw this run beside it; fig_label: this run's name in the legends; limit_loss_max: losses above it are left out.
    Usage: axes, last = hist_plot_split("checkpoints/m_hist.json", [5, 45], ["arc S16", "arc S64"])
    """
    plt = _pyplot()
    hist = load_histories(history)
    if "loss" not in hist:
        raise ValueError("history has no 'loss' (keys: {})".format(", ".join(sorted(hist))))
    if axes is None:
        fig, axes = plt.subplots(1, 4, sharex=True, figsize=(20, 5))
    fig = axes[0].figure
    customs = customs if customs else [key for key in hist if key not in NOT_CURVES]
    losses = [value if value is not None and value < limit_loss_max else None for value in hist["loss"]]
    plan_lengths = [len(part) for part in split_by_plans(losses, epochs)]
    panels = [("loss", {fig_label: losses}, np.argmin), ("accuracy", {fig_label: hist.get("accuracy", [])}, np.argmax)]
    panels.append((", ".join(customs), {"{} {}".format(fig_label, key) if fig_label else key: hist[key] for key in customs if key in hist}, np.argmax))
    panels.append(("lr", {fig_label: hist.get("lr", [])}, None))
    for ax, (title, curves, peak) in zip(axes, panels):
        for label, values in curves.items():
            _curve(ax, values, init_epoch, label=label, peak=peak)
        ax.set_title(title)
        _plan_marks(ax, plan_lengths, names, init_epoch)
        if any(label for label in curves):
            ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    if save == "" and not isinstance(history, dict):
        save = os.path.splitext(history if isinstance(history, (str, os.PathLike)) else list(history)[-1])[0] + ".png"
    if save:
        save_figure(fig, save)
    last = {key: values[-1] for key, values in hist.items() if values and key != "epoch"}
    return axes, last


def lr_values(lr_base=0.001, lr_decay=0.05, lr_decay_steps=0, lr_min=1e-6, lr_warmup_steps=0, epochs=60, steps_per_epoch=1000):
    """The learning rate `train.Train` would use, per epoch (or per batch for cosine on batch), as a NumPy array.

    Usage: lrs = lr_values(0.1, 0.1, [20, 30], epochs=40)
    """
    from . import myCallbacks

    scheduler = myCallbacks.build_lr_scheduler(lr_base, lr_decay, lr_decay_steps, lr_min, lr_warmup_steps, steps_per_epoch)
    iterations = epochs * steps_per_epoch if scheduler.is_on_batch else epochs
    return np.array([scheduler.lr_at(iteration) for iteration in range(iterations)])


def lr_schedule_plot(lr_base=0.001, lr_decay=0.05, lr_decay_steps=0, lr_min=1e-6, lr_warmup_steps=0, epochs=60, steps_per_epoch=1000, save=None, ax=None):
    """Plot the learning-rate schedule of `Train`'s lr arguments over `epochs` (x in epochs); returns the axis.

    Usage: lr_schedule_plot(lr_base=0.001, lr_decay=0.5, lr_decay_steps=24, lr_min=1e-7, lr_warmup_steps=1, epochs=120)
    """
    plt = _pyplot()
    values = lr_values(lr_base, lr_decay, lr_decay_steps, lr_min, lr_warmup_steps, epochs, steps_per_epoch)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    ax.plot(np.arange(len(values)) * epochs / len(values), values, label="lr_decay_steps={}".format(lr_decay_steps))
    ax.set_xlabel("epoch")
    ax.set_title("learning rate")
    ax.legend(loc="best", fontsize=8)
    if save:
        save_figure(ax.figure, save)
    return ax


def _best_index(values):
    """Index of the largest value, missing (None) values never chosen; the first one on ties, as np.argmax."""
    filled = [-np.inf if value is None else value for value in values]
    return int(np.argmax(filled))


def _sort_key(value):
    """Ascending order of a table column, missing values last."""
    return (value is None, 0 if value is None else value)


def _markdown_table(rows, columns):
    """A markdown table of `rows` ({name: {column: value}}), one line per name.  Usage: print(_markdown_table(rr, ["lfw"]))"""
    def cell(value):
        return "{:.6g}".format(value) if isinstance(value, float) else str(value)

    lines = ["| | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    lines += ["| {} | ".format(name) + " | ".join(cell(row.get(key, "")) for key in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines)


def _history_summaries(hist, metric_key, key_picks):
    """The four summaries of one history: at the best `metric_key` epoch, each key's own best, at the best sum, latest."""
    picks = [key for key in key_picks if key in hist]
    at_metric = _best_index(hist[metric_key])
    at_sum = _best_index(np.sum([[-np.inf if vv is None else vv for vv in hist[key]] for key in picks], axis=0))
    return (
        dict({key: hist[key][at_metric] for key in picks}, epoch=at_metric),
        {key: "{:.4f}, {:2d}".format(hist[key][_best_index(hist[key])], _best_index(hist[key])) for key in picks},
        dict({key: hist[key][at_sum] for key in picks}, epoch=at_sum),
        dict({key: hist[key][-1] for key in picks}, epoch=len(hist[metric_key])),
    )


def choose_accuracy(aa, skip_name_len=0, sort_metric=False, metric_key="agedb_30", key_picks=EVALS_NAME):
    """Best epochs of several runs' history files, as the original plot.choose_accuracy; prints four markdown tables.

    aa: `_hist.json` paths, one run each (its name: the file name without extension, minus `skip_name_len` leading
    characters). For each run: the eval values at the epoch of the best `metric_key` ("<metric_key> max"), each eval
    set's own best "value, epoch" ("all max"), the values at the epoch of the best sum over `key_picks` ("sum max"),
    and the last values ("latest", epoch = number of epochs). Epochs are 0-based indices into the history lists, as
    the original; a missing (None) value is never the best. `metric_key` not in `key_picks` means the last of
    `key_picks`; `sort_metric` sorts the rows by it. Returns the first three tables as dicts {run: {key: value}}.
    Usage: metric_max, all_max, sum_max = choose_accuracy(["checkpoints/a_hist.json", "checkpoints/b_hist.json"])
    """
    metric_key = metric_key if metric_key in key_picks else key_picks[-1]
    tables = ({}, {}, {}, {})
    for path in [aa] if isinstance(aa, (str, os.PathLike)) else aa:
        hist = load_histories(path)
        if not hist.get(metric_key):
            raise ValueError("{}: no '{}' values to choose by (keys: {})".format(path, metric_key, ", ".join(sorted(hist))))
        name = os.path.splitext(os.path.basename(path))[0][skip_name_len:]
        for table, summary in zip(tables, _history_summaries(hist, metric_key, key_picks)):
            table[name] = summary
    for title, table in zip([metric_key + " max", "all max", "sum max", "latest"], tables):
        columns = [key for key in [*key_picks, "epoch"] if any(key in row for row in table.values())]
        rows = dict(sorted(table.items(), key=lambda item: _sort_key(item[1].get(metric_key)))) if sort_metric else table
        print("\n>>>> {} :\n{}".format(title, _markdown_table(rows, columns)))
    return tables[:3]


# ------------------------------------------------------------------------------------------------ command line
def curves_path(runs):
    """The default figure of `runs` (lists of history files): beside the first, named after each run's last file.

    Usage: curves_path([["c/a_hist.json"], ["c/b_hist.json"]]) -> "c/a_hist_vs_b_hist.png"
    """
    stems = [os.path.splitext(os.path.basename(files[-1]))[0] for files in runs]
    return os.path.join(os.path.dirname(os.path.abspath(runs[0][0])), io_utils.name_of_several(stems) + ".png")


def plot_runs(histories, epochs=None, names=None, customs=None, labels=None, init_epoch=0, limit_loss_max=1e5, output=None, overwrite=False):
    """Draw each run of `histories` (a `_hist.json`, or `a.json,b.json` for a run continued in several files) with
    `hist_plot_split` on the same four panels and save the figure; returns its path.

    Usage: plot_runs(["checkpoints/a_hist.json", "checkpoints/b_hist.json"], epochs=[5, 45], names=["S16", "S64"])
    """
    runs = [run.split(",") for run in histories]
    labels = labels or [os.path.splitext(os.path.basename(files[-1]))[0] for files in runs]
    if len(labels) != len(runs):
        raise ValueError("{} labels for {} runs; give one label per history argument".format(len(labels), len(runs)))
    output = cli.check_output_file(output or curves_path(runs), overwrite, "figure")
    axes = None
    for files, label in zip(runs, labels):
        axes, _ = hist_plot_split(files, epochs, names, customs, save=None, axes=axes, init_epoch=init_epoch, fig_label=label,
                                  limit_loss_max=limit_loss_max)
    save_figure(axes[0].figure, output)
    _pyplot().close(axes[0].figure)
    print(">>>> Saved curves: {}".format(output))
    return output


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        prog=cli.prog_name("plot.py"),
        description="Training curves (loss, accuracy, eval sets, lr) of one or more runs from Train's <stem>_hist.json files, "
        "drawn side by side (hist_plot_split) into one figure.",
    )
    parser.add_argument("histories", nargs="+", metavar="HIST_JSON",
                        help="a run's _hist.json; a run continued in several files: first_hist.json,second_hist.json")
    parser.add_argument("-e", "--epochs", type=cli.positive_int, nargs="+", default=None, help="the plans' lengths in epochs, e.g. 5 5 40")
    parser.add_argument("-n", "--names", nargs="+", default=None, help="the plans' names, drawn at their first epoch")
    parser.add_argument("-c", "--customs", nargs="+", default=None, help="history keys of the third panel (default: every eval set)")
    parser.add_argument("-l", "--labels", nargs="+", default=None, help="the runs' names in the legends (default: the file names)")
    parser.add_argument("--init_epoch", type=int, default=0, help="epoch number of the first history entry, less one (default 0)")
    parser.add_argument("--limit_loss_max", type=float, default=1e5, help="losses above it are left out (default 1e5)")
    parser.add_argument("-o", "--output", default=None,
                        help="figure path (.png, .svg, .pdf); default beside the first history: <stem>.png, several runs <stem1>_vs_<stem2>.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing figure (default: keep it and stop)")
    args = parser.parse_args(argv)
    if args.init_epoch < 0:
        parser.error("argument --init_epoch: expected a whole number >= 0, got {}".format(args.init_epoch))
    return args


def main(argv=None):
    """The command line of plot.py (console script keras-insightface-plot).  Usage: main(["a_hist.json", "-e", "5", "45"])"""
    args = parse_arguments(argv)
    return cli.run("plot.py", plot_runs, args.histories, args.epochs, args.names, args.customs, args.labels, args.init_epoch,
                   args.limit_loss_max, args.output, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())

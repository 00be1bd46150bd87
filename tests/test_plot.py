"""plot.py: history curves of runs side by side and the learning-rate schedule plot."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from keras_insightface import plot  # noqa: E402


def write_history(path, epochs, seed):
    rng = np.random.default_rng(seed)
    history = {
        "loss": list(np.linspace(10, 1, epochs) + rng.uniform(0, 0.1, epochs)),
        "accuracy": list(np.linspace(0.1, 0.9, epochs)),
        "lfw": list(np.linspace(0.7, 0.99, epochs)),
        "agedb_30": list(np.linspace(0.6, 0.95, epochs)),
        "lr": [0.1] * (epochs // 2) + [0.01] * (epochs - epochs // 2),
        "epoch": list(range(epochs)),
    }
    with open(path, "w") as ff:
        json.dump(history, ff)
    return history


def test_two_runs_side_by_side_on_four_panels(tmp_path):
    first = write_history(tmp_path / "a_hist.json", 6, 0)
    write_history(tmp_path / "b_hist.json", 6, 1)
    axes, last = plot.hist_plot_split(str(tmp_path / "a_hist.json"), [2, 4], ["S16", "S64"], fig_label="a", save=None)
    axes, _ = plot.hist_plot_split(str(tmp_path / "b_hist.json"), [2, 4], ["S16", "S64"], axes=axes, fig_label="b", save=str(tmp_path / "ab.png"))
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy", "lfw, agedb_30", "lr"]
    assert len(axes[0].get_lines()) >= 2 and len(axes[2].get_lines()) >= 4  # both runs, both eval sets
    loss_x, loss_y = axes[0].get_lines()[0].get_data()
    np.testing.assert_allclose(loss_x, np.arange(1, 7))
    np.testing.assert_allclose(loss_y, first["loss"])
    assert last["lfw"] == pytest.approx(first["lfw"][-1]) and last["lr"] == 0.01
    assert (tmp_path / "ab.png").stat().st_size > 1000


def test_a_run_continued_in_two_files_is_one_curve_and_saves_beside_it(tmp_path):
    write_history(tmp_path / "x_hist.json", 3, 0)
    write_history(tmp_path / "x2_hist.json", 2, 1)
    axes, _ = plot.hist_plot_split([str(tmp_path / "x_hist.json"), str(tmp_path / "x2_hist.json")])
    assert len(axes[0].get_lines()[0].get_data()[0]) == 5
    assert (tmp_path / "x2_hist.png").stat().st_size > 1000


def test_bad_history_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_hist.json"):
        plot.hist_plot_split(str(tmp_path / "missing_hist.json"))
    (tmp_path / "bad_hist.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad_hist.json: not a JSON history file"):
        plot.hist_plot_split(str(tmp_path / "bad_hist.json"))


def test_lr_schedule_values_follow_the_formulas(tmp_path):
    constant = plot.lr_values(lr_base=0.1, lr_decay=0.1, lr_decay_steps=[2, 4], epochs=6)
    np.testing.assert_allclose(constant, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    exponential = plot.lr_values(lr_base=0.001, lr_decay=0.05, lr_decay_steps=0, lr_min=0, epochs=4)
    np.testing.assert_allclose(exponential, [0.001 * math.exp(-0.05 * ii) for ii in range(4)])
    ax = plot.lr_schedule_plot(lr_base=0.001, lr_decay=0.5, lr_decay_steps=3, lr_min=1e-7, epochs=10, save=str(tmp_path / "lr.png"))
    assert len(ax.get_lines()) == 1 and (tmp_path / "lr.png").stat().st_size > 1000


def test_choose_accuracy_on_hand_written_histories(tmp_path, capsys):
    run_a = {"loss": [5, 4, 3, 2], "lfw": [0.90, 0.95, 0.97, 0.96], "cfp_fp": [0.80, 0.91, 0.85, 0.90], "agedb_30": [0.70, 0.88, 0.86, 0.87]}
    run_b = {"loss": [6, 5, 4], "lfw": [0.91, None, 0.99], "cfp_fp": [0.70, None, 0.72], "agedb_30": [0.60, None, 0.65]}
    paths = []
    for name, hist in (("TT_a_hist", run_a), ("TT_b_hist", run_b)):
        paths.append(str(tmp_path / (name + ".json")))
        with open(paths[-1], "w") as ff:
            json.dump(hist, ff)
    metric_max, all_max, sum_max = plot.choose_accuracy(paths, skip_name_len=3, key_picks=["lfw", "cfp_fp", "agedb_30"])
    # by hand: a's best agedb_30 is epoch 1; its best lfw + cfp_fp + agedb_30 sum is epoch 1 (2.74 against 2.73 at epoch 3)
    assert metric_max["a_hist"] == {"lfw": 0.95, "cfp_fp": 0.91, "agedb_30": 0.88, "epoch": 1}
    assert all_max["a_hist"] == {"lfw": "0.9700,  2", "cfp_fp": "0.9100,  1", "agedb_30": "0.8800,  1"}
    assert sum_max["a_hist"]["epoch"] == 1 and sum_max["b_hist"] == {"lfw": 0.99, "cfp_fp": 0.72, "agedb_30": 0.65, "epoch": 2}
    assert metric_max["b_hist"]["epoch"] == 2  # a missing value is never the best
    out = capsys.readouterr().out
    assert ">>>> agedb_30 max :" in out and ">>>> latest :" in out and "| a_hist | 0.96 | 0.9 | 0.87 | 4 |" in out
    plot.choose_accuracy(paths, 3, sort_metric=True, metric_key="IJBB", key_picks=["lfw", "agedb_30"])  # falls back to agedb_30
    table = capsys.readouterr().out.split(">>>> agedb_30 max :")[1]
    assert table.index("| b_hist |") < table.index("| a_hist |")  # ascending agedb_30, as the original
    with pytest.raises(ValueError, match="TT_a_hist.json: no 'IJBC' values"):
        plot.choose_accuracy(paths[:1], metric_key="IJBC", key_picks=["lfw", "IJBC"])


# ---------------------------------------------------------------- the command line
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_command_line_draws_runs_side_by_side_and_keeps_the_figure(tmp_path, capsys):
    first = write_history(tmp_path / "a_hist.json", 6, 0)
    write_history(tmp_path / "b_hist.json", 4, 1)
    write_history(tmp_path / "a2_hist.json", 2, 2)
    figure = tmp_path / "a2_hist_vs_b_hist.png"  # a run continued in two files is named by its last file
    assert plot.main([str(tmp_path / "a_hist.json") + "," + str(tmp_path / "a2_hist.json"), str(tmp_path / "b_hist.json"), "-e", "2", "6"]) == 0
    assert ">>>> Saved curves: {}".format(figure) in capsys.readouterr().out
    drawn = figure.read_bytes()
    assert drawn[:8] == b"\x89PNG\r\n\x1a\n"

    assert plot.main([str(tmp_path / "a_hist.json"), str(tmp_path / "a2_hist.json") + "," + str(tmp_path / "b_hist.json"),
                      "-o", str(figure)]) == 2
    assert capsys.readouterr().err == "plot.py: error: figure {}: already exists; it is kept (pass --overwrite to replace it)\n".format(figure)
    assert figure.read_bytes() == drawn
    assert plot.main([str(tmp_path / "a_hist.json"), "-o", str(figure), "--overwrite"]) == 0
    assert figure.read_bytes() != drawn
    assert plot.main([str(tmp_path / "a_hist.json")]) == 0 and (tmp_path / "a_hist.png").stat().st_size > 1000

    axes, _ = plot.hist_plot_split(str(tmp_path / "a_hist.json"), save=None)  # what the command draws for a run
    np.testing.assert_allclose(axes[0].get_lines()[0].get_data()[1], first["loss"])


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "not a history file; expected a JSON object of per-epoch lists"),
    ('{"loss": 3}', "not a history file; expected a JSON object of per-epoch lists"),
    ("{not json", "not a JSON history file"),
])
def test_command_line_errors_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "x_hist.json"
    path.write_text(content)
    assert plot.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plot.py: error: {}: {}".format(path, message)) and err.count("\n") == 1
    assert plot.main([str(tmp_path / "missing_hist.json")]) == 2
    assert plot.main([str(path), "-o", str(tmp_path)]) == 2 and "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "x_hist.png").exists()
    with pytest.raises(SystemExit):
        plot.main([str(path), "-e", "0"])


def test_plot_py_help_runs_from_the_repo_root():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    result = subprocess.run([sys.executable, "plot.py", "--help"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: plot.py") and "HIST_JSON" in result.stdout and "--overwrite" in result.stdout

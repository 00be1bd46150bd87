"""A run never destroys an earlier one in the same `save_path`: a restart keeps the earlier run's files under
`<stem>_earlier_<k>/`, the seed's resume continues in place, and a best basic model is only replaced by a better one."""
import json
import os

import keras
import pytest

from keras_insightface import checkpoints, evals, losses, train
from tests.helpers import tiny_basic_model, tree_sha256

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LFW_BIN = os.path.join(REPO, "tests", "data", "faces_rec", "lfw.bin")


def arcface_plan(epochs, **keys):
    return dict({"loss": losses.ArcfaceLoss(scale=16), "epoch": epochs, "optimizer": keras.optimizers.SGD(0.01, momentum=0.9)}, **keys)


def read_history(path):
    with open(path, encoding="utf-8") as ff:
        return json.load(ff)


def test_a_new_train_on_an_existing_save_path_keeps_the_earlier_run(dataset):
    first = train.Train(dataset, "run.h5", eval_paths=[LFW_BIN], basic_model=tiny_basic_model(), batch_size=8)
    first.train([arcface_plan(2)], 0)
    earlier = tree_sha256("checkpoints")
    earlier_best = [name for name in earlier if name.startswith("run_basic_lfw_epoch_")]
    assert len(earlier_best) == 1 and len(read_history("checkpoints/run_hist.json")["loss"]) == 2

    second = train.Train(dataset, "run.h5", eval_paths=[LFW_BIN], basic_model=tiny_basic_model(), batch_size=8)
    second.train([arcface_plan(1)], 0)
    kept = tree_sha256(os.path.join("checkpoints", "run_earlier_1"))
    for name, data in earlier.items():  # every earlier file, byte for byte, under the earlier run's folder
        assert kept[name] == data, name
    assert len(read_history("checkpoints/run_hist.json")["loss"]) == 1  # the new run's own history
    assert len(read_history("checkpoints/run_earlier_1/run_hist.json")["loss"]) == 2


def test_the_sub_center_recipe_keeps_the_first_phase(dataset):
    """The seed's recipe: lossTopK training, then `reset_dataset` and `tt.train(sch, 0)` on the same Train."""
    tt = train.Train(dataset, "topk.h5", basic_model=tiny_basic_model(), batch_size=8)
    tt.train([arcface_plan(2, lossTopK=3)], 0)
    tt.reset_dataset(dataset)
    tt.train([arcface_plan(1)], 0)
    assert len(read_history("checkpoints/topk_earlier_1/topk_hist.json")["loss"]) == 2
    assert len(read_history("checkpoints/topk_hist.json")["loss"]) == 1
    first_phase = keras.models.load_model("checkpoints/topk_earlier_1/topk.h5", compile=False)
    assert tuple(first_phase.get_layer("NormDense").w.shape)[1] == 3 * tt.classes  # the sub-center model is kept


def test_continuing_at_the_epochs_done_and_resuming_a_kept_epoch_keep_nothing_aside(dataset):
    tt = train.Train(dataset, "cont.h5", basic_model=tiny_basic_model(), batch_size=8)
    tt.train([arcface_plan(1)], 0)
    tt.train([arcface_plan(1)], 1)  # the same run, continued
    resumed = train.Train(dataset, "cont.h5", model=os.path.join("checkpoints", "cont.h5"), batch_size=8)
    resumed.train([arcface_plan(1)], 1)  # the seed's resume at a kept epoch
    assert not [name for name in os.listdir("checkpoints") if "_earlier_" in name]
    assert len(read_history("checkpoints/cont_hist.json")["loss"]) == 2
    bottleneck = train.Train(dataset, "neck.h5", basic_model=tiny_basic_model(), batch_size=8)
    bottleneck.train([arcface_plan(1, bottleneckOnly=True), arcface_plan(1)], 0)  # a bottleneckOnly plan does not count
    assert not [name for name in os.listdir("checkpoints") if "_earlier_" in name]


@pytest.mark.parametrize("new_accuracy, kept", [(0.9, {"0.950000", "0.900000"}), (0.97, {"0.970000"})])
def test_a_best_basic_model_is_only_replaced_by_a_better_one(workdir, new_accuracy, kept):
    run = checkpoints.RunCheckpoint("best.h5")
    os.makedirs("checkpoints")
    old = run.best_basic_path("lfw", 3, 0.95)
    open(old, "wb").close()
    new = run.best_basic_path("lfw", 1, new_accuracy)
    open(new, "wb").close()
    checkpoints.remove_worse_best(run.best_basic_files("lfw"), new)
    assert {os.path.basename(path).rsplit("_", 1)[1][:-3] for path in run.best_basic_files("lfw")} == kept


def test_eval_callback_never_removes_a_better_saved_model(workdir):
    basic_model = tiny_basic_model()
    os.makedirs("checkpoints")
    better = checkpoints.RunCheckpoint("mine.h5").best_basic_path("lfw", 9, 0.999)
    open(better, "wb").close()
    callback = evals.eval_callback(basic_model, LFW_BIN, batch_size=8, save_model="mine")
    callback.on_epoch_end(0)
    assert os.path.exists(better) and 0 < callback.max_accuracy < 0.999
    assert len(checkpoints.RunCheckpoint("mine.h5").best_basic_files("lfw")) == 2
    assert callback.is_improved

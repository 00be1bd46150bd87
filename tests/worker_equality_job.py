"""One process of tests/test_worker_equality.py and bench/worker_equality.py: `Train` on a small image folder, each
case of `case_table` for 2 epochs one after the other, in the current folder (checkpoints/ of each case), the final
weights of each in weights/<case>.npz.

    python -m tests.worker_equality_job --data DIR [--ports P0,P1 --index I] [--reorder] [--cases a,b] [--epochs N]
                                        [--resume_from DIR]

With --ports the process is worker --index of a cluster of one worker per port on 127.0.0.1, each worker a batch of
GLOBAL_BATCH / workers; without, one worker at GLOBAL_BATCH (no strategy). --reorder reverses the rows of every batch:
the same run in another float summation order, the reference of what rounding alone does. --resume_from DIR (the
other side's working folder): once its weights folder says `done`, each case of RESUMED continues DIR's run from its
epoch-1 checkpoint for the remaining epochs (the seed's `tt.train(sch, 1)`), into weights/<case>_resumed.npz. The
basic model's weights before training are in weights/<case>_start.npz. Prints `DONE <seconds> s, collective threads <N>`.
"""
import argparse
import collections
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"

from tests.local_cluster import set_tf_config  # noqa: E402

GLOBAL_BATCH, IMAGE_SIZE = 16, 32
RESUMED = ("sgd_arcface",)
WAIT_SECONDS = 400
WEIGHTS = "weights"
Case = collections.namedtuple("Case", ["optimizer", "loss", "lr", "batchnorm", "shard_centers"])


def case_table(keras, losses, optimizers):
    """name -> Case(optimizer factory of the lr, loss factory, lr, BatchNorm in the model (synchronized), sharded centers)."""
    arcface, softmax = (lambda: losses.ArcfaceLoss(scale=16)), (lambda: "categorical_crossentropy")
    sgd = lambda lr: keras.optimizers.SGD(lr, momentum=0.9)  # noqa: E731
    sgdw = lambda lr: optimizers.SGDW(lr, weight_decay=5e-4, momentum=0.9)  # noqa: E731
    adamw = lambda lr: optimizers.AdamW(lr, weight_decay=5e-5)  # noqa: E731
    return {
        "sgd_arcface": Case(sgd, arcface, 0.1, True, False),
        "sgdw_arcface": Case(sgdw, arcface, 0.1, True, False),
        "adamw_arcface": Case(adamw, arcface, 0.1, True, False),
        "sgd_softmax": Case(sgd, softmax, 0.1, True, False),
        "sgdw_softmax": Case(sgdw, softmax, 0.1, True, False),
        "adamw_softmax": Case(adamw, softmax, 0.1, True, False),
        "sgd_arcface_no_batchnorm": Case(sgd, arcface, 0.1, False, False),
        "sgd_arcface_sharded": Case(sgd, arcface, 0.1, True, True),
    }


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="an image folder of IMAGE_SIZE images (tests.helpers.make_image_folder)")
    parser.add_argument("--ports", default="")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--reorder", action="store_true")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resume_from", default="")
    return parser.parse_args(argv)


def final_weights(tt):
    """The basic model's weights, then the head's (the sharded centers gathered: every worker calls this)."""
    if hasattr(tt.model, "centers"):
        return tt.basic_model.get_weights() + [tt.model.centers.get()]
    return tt.model.get_weights()


def collective_threads():
    """Threads of this process TensorFlow keeps for collectives with a timeout ("collective_ops"; Linux, else 0)."""
    count = 0
    for task in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else []:
        try:
            with open(os.path.join("/proc/self/task", task, "comm")) as comm:
                count += comm.read().strip() == "collective_ops"
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return count


def wait_for(path):
    deadline = time.time() + WAIT_SECONDS
    while not os.path.exists(path):
        if time.time() > deadline:
            raise TimeoutError("waited {} s for {}".format(WAIT_SECONDS, path))
        time.sleep(0.5)


def main(argv=None):
    args = parse_args(argv)
    num_workers = set_tf_config(args.ports, args.index) if args.ports else 1
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # several processes share the test machine's cores
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from keras_insightface import losses, multi_worker, optimizers, train
    from tests.helpers import reversed_rows, small_conv_model, with_class_centers

    strategy = multi_worker.cluster_strategy(timeout_seconds=WAIT_SECONDS) if args.ports else tf.distribute.get_strategy()
    cases = case_table(keras, losses, optimizers)
    names = args.cases.split(",") if args.cases else list(cases)
    os.makedirs(WEIGHTS, exist_ok=True)
    start = time.perf_counter()

    def new_train(name, case, **model):
        return train.Train(args.data, name + ".h5", eval_paths=[], batch_size=GLOBAL_BATCH // num_workers, lr_base=case.lr, random_status=3,
                           random_crop=(28, 28, 3), seed=1, sync_batchnorm=case.batchnorm, shard_centers=case.shard_centers, **model)

    def from_scratch(name, case):
        keras.utils.set_random_seed(0)
        basic = small_conv_model(case.batchnorm, size=IMAGE_SIZE)
        np.savez(os.path.join(WEIGHTS, name + "_start.npz"), *basic.get_weights())
        if not case.shard_centers:
            return new_train(name, case, basic_model=basic)
        return new_train(name, case, model=with_class_centers(basic, len(os.listdir(args.data))))  # dense and sharded: the same start

    with strategy.scope():
        for name in names:
            case = cases[name]
            tt = from_scratch(name, case)
            if args.reorder:
                tt.train_ds = reversed_rows(tt.train_ds)
            tt.train([{"loss": case.loss(), "epoch": args.epochs, "optimizer": case.optimizer(case.lr)}], 0)
            np.savez(os.path.join(WEIGHTS, name + ".npz"), *final_weights(tt))
        open(os.path.join(WEIGHTS, "done"), "w").close()
        if args.resume_from:
            wait_for(os.path.join(args.resume_from, WEIGHTS, "done"))
            for name in (name for name in RESUMED if name in names):
                tt = new_train(name + "_resumed", cases[name], model=os.path.join(args.resume_from, "checkpoints", name + ".h5"))
                tt.train([{"loss": cases[name].loss(), "epoch": args.epochs - 1}], 1)
                np.savez(os.path.join(WEIGHTS, name + "_resumed.npz"), *final_weights(tt))
    print("DONE {:.1f} s, collective threads {}".format(time.perf_counter() - start, collective_threads()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

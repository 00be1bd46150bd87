"""One process of the multi-worker tests and benchmark: `Train` on the demo data, then its final weights in a .npz.

    python -m tests.multi_worker_job --out w0.npz --data DIR [--ports P0,P1 --index I] [--resume EPOCHS --model CKPT]
                                     [--die_at EPOCH,BATCH] [--stop_after EPOCH]

With --ports, TF_CONFIG names one worker per port on 127.0.0.1 and the process is worker --index; without, it trains
alone at the same global batch. --die_at ends this process abruptly at that batch (a killed worker); --stop_after asks
this worker's gentle stop at the end of that epoch. Prints one `RESULT {json}` line.
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CUDA_VISIBLE_DEVICES"] = "-1"

from tests.local_cluster import set_tf_config  # noqa: E402

SCHEDULE_EPOCHS = 2


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", required=True, help="demo data folder (made by demo.make_demo_dataset)")
    parser.add_argument("--ports", default="")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--global_batch", type=int, default=32)
    parser.add_argument("--resume", type=int, default=0, help="epochs done: resume from --model")
    parser.add_argument("--model", default=None)
    parser.add_argument("--die_at", default="")
    parser.add_argument("--stop_after", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--random_status", type=int, default=-1)
    parser.add_argument("--no_eval", action="store_true")
    return parser.parse_args(argv)


def schedule(keras, losses, epochs_done):
    """One ArcFace plan of SCHEDULE_EPOCHS epochs; resumed, its remaining epochs (the optimizer comes from the checkpoint)."""
    if epochs_done:
        return [{"loss": losses.ArcfaceLoss(scale=16), "epoch": SCHEDULE_EPOCHS - epochs_done}]
    return [{"loss": losses.ArcfaceLoss(scale=16), "epoch": SCHEDULE_EPOCHS, "optimizer": keras.optimizers.SGD(0.005, momentum=0.9)}]


def small_basic_model(keras):
    """A basic model quick to trace and train on a loaded CPU: strided conv, pooling, a BatchNorm embedding."""
    inputs = keras.Input((112, 112, 3))
    nn = keras.layers.Conv2D(8, 3, strides=4, use_bias=False)(inputs)
    nn = keras.layers.BatchNormalization()(nn)
    nn = keras.layers.PReLU(shared_axes=[1, 2])(nn)
    nn = keras.layers.GlobalAveragePooling2D()(nn)
    nn = keras.layers.Dense(16)(nn)
    nn = keras.layers.BatchNormalization(name="embedding")(nn)
    return keras.Model(inputs, nn, name="small")


def main(argv=None):
    args = parse_args(argv)
    num_workers = set_tf_config(args.ports, args.index) if args.ports else 1
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)  # several processes share the test machine's cores
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from keras_insightface import losses, multi_worker, train

    strategy = multi_worker.cluster_strategy(timeout_seconds=args.timeout) if args.ports else tf.distribute.get_strategy()
    train_dir, bin_path = os.path.join(args.data, "train"), os.path.join(args.data, "demo_verify.bin")
    eval_paths = [] if args.no_eval else [bin_path]
    with strategy.scope():
        keras.utils.set_random_seed(0)
        common = dict(batch_size=args.global_batch // num_workers, lr_base=0.005, random_status=args.random_status, seed=0, sync_batchnorm=True)
        if args.resume:
            tt = train.Train(train_dir, "mw.h5", eval_paths=eval_paths, model=args.model, **common)
        else:
            basic_model = small_basic_model(keras)
            tt = train.Train(train_dir, "mw.h5", eval_paths=eval_paths, basic_model=basic_model, **common)
        add_test_callbacks(tt, args, keras)
        start = time.perf_counter()
        epochs = tt.train(schedule(keras, losses, args.resume), args.resume)
        seconds = time.perf_counter() - start
    np.savez(args.out, *tt.model.get_weights())
    result = {"epochs": epochs, "seconds": seconds, "steps_per_epoch": tt.steps_per_epoch, "is_chief": tt.worker.is_chief,
              "max_accuracy": tt.my_evals[-1].max_accuracy if tt.my_evals else None,
              "history_epochs": tt.my_hist.history.get("epoch"), "history_loss": tt.my_hist.history.get("loss")}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def add_test_callbacks(tt, args, keras):
    """Wrap `tt._callbacks` to add the abrupt death / gentle stop of this worker."""
    extra = []
    if args.die_at:
        die_epoch, die_batch = (int(value) for value in args.die_at.split(","))

        class Die(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.epoch = epoch

            def on_train_batch_begin(self, batch, logs=None):
                if self.epoch == die_epoch and batch == die_batch:
                    print("DYING at epoch {} batch {}".format(die_epoch, die_batch), flush=True)
                    os._exit(9)

        extra.append(Die())
    if args.stop_after:

        class AskStop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == args.stop_after:
                    self.model.stop_training = True

        extra.append(AskStop())
    callbacks = tt._callbacks
    tt._callbacks = lambda: extra + callbacks()


if __name__ == "__main__":
    sys.exit(main())

"""Partial FC: the v2 sampling rule, r = 1 against the dense head, sampled-row optimizer updates, Train save / resume."""
import functools
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_insightface import demo, losses, models, optimizers, partial_fc, train
from tests.helpers import colour_face, tiny_basic_model

EMB = 8


def numpy_sample(labels, num_classes, num_sample, scores):
    """arcface_torch PartialFC_V2.sample in NumPy: positives scored 2.0, top num_sample (or all positives), sorted."""
    positive = np.unique(labels)
    if num_sample < len(positive):
        index = positive
    else:
        scores = scores.copy()
        scores[positive] = 2.0
        index = np.sort(np.argsort(-scores, kind="stable")[:num_sample])
    return index, np.searchsorted(index, labels)


@pytest.mark.parametrize("num_sample", [30, 3])
def test_sample_classes_follows_the_v2_rule(num_sample):
    labels = np.array([5, 17, 5, 99, 0, 42], np.int32)
    seed = [7, 3]
    scores = tf.random.stateless_uniform((100,), seed=seed, dtype="float32").numpy()
    index, local = partial_fc.sample_classes(labels, 100, num_sample, seed)
    expected_index, expected_local = numpy_sample(labels, 100, num_sample, scores)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_array_equal(local, expected_local)
    np.testing.assert_array_equal(np.asarray(index)[np.asarray(local)], labels)  # every positive kept, remapped onto itself
    assert len(index) == max(num_sample, 5)


def dense_and_partial_heads(num_classes, loss_top_k, append_norm, regularizer):
    dense = models.NormDense(num_classes, kernel_regularizer=regularizer, loss_top_k=loss_top_k, append_norm=append_norm)
    partial = partial_fc.NormDensePartialFC(num_classes, 1.0, regularizer, loss_top_k, append_norm, seed=1)
    dense.build((None, EMB))
    partial.build([(None, EMB), (None,)])
    partial.w.assign(keras.ops.transpose(dense.w))
    return dense, partial


LOSSES_R1 = [
    (lambda: losses.ArcfaceLoss(scale=16.0), 1, False),
    (lambda: losses.CosFaceLoss(label_smoothing=0.1), 1, False),
    (lambda: losses.CurricularFaceLoss(scale=16.0, label_smoothing=0.1), 2, False),
    (lambda: losses.MagFaceLoss(), 1, True),
    (lambda: losses.AdaFaceLoss(), 2, True),
    (lambda: keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1), 1, False),
]


@pytest.mark.parametrize("make_loss, loss_top_k, append_norm", LOSSES_R1)
def test_rate_one_equals_the_dense_head(make_loss, loss_top_k, append_norm):
    num_classes, batch = 12, 6
    rng = np.random.default_rng(0)
    embedding = tf.constant(rng.normal(size=(batch, EMB)) * 5, "float32")
    labels = tf.constant(rng.integers(0, num_classes, batch), "int32")
    dense, partial = dense_and_partial_heads(num_classes, loss_top_k, append_norm, keras.regularizers.L2(1e-3))
    dense_loss = make_loss()
    dense_loss = dense_loss if losses.takes_integer_labels(dense_loss) else losses.OneHotLabels(dense_loss, num_classes)
    partial_loss = partial_fc.PartialFCLoss(make_loss())

    def loss_and_gradients(head, loss, inputs):
        with tf.GradientTape() as tape:
            tape.watch(embedding)
            value = loss(labels, head(inputs, training=True)) + sum(head.losses)
        grad_w, grad_x = tape.gradient(value, [head.w, embedding])
        return value.numpy(), tf.convert_to_tensor(grad_w).numpy(), grad_x.numpy()

    expected = loss_and_gradients(dense, dense_loss, embedding)
    got = loss_and_gradients(partial, partial_loss, [embedding, labels])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], expected[1].T, atol=1e-5)
    np.testing.assert_allclose(got[2], expected[2], atol=1e-5)


OPTIMIZERS = [
    lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda: keras.optimizers.Adam(0.01),
    lambda: keras.optimizers.AdamW(0.01, weight_decay=0.05, amsgrad=True),
    lambda: optimizers.SGDW(0.1, weight_decay=5e-3, momentum=0.9),
    lambda: optimizers.AdamW(0.01, weight_decay=5e-3),
]


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_only_sampled_rows_and_their_slots_change(make_optimizer):
    num_classes, batch = 40, 4
    rng = np.random.default_rng(1)
    head = partial_fc.NormDensePartialFC(num_classes, sample_rate=0.2, seed=3)
    embedding = tf.constant(rng.normal(size=(batch, EMB)), "float32")
    labels = tf.constant([1, 7, 7, 30], "int32")
    head.build([(None, EMB), (None,)])
    optimizer = partial_fc.rows_only(make_optimizer())
    optimizer.build([head.w])
    slots = [ii for ii, variable in enumerate(optimizer.variables) if tuple(variable.shape) == (num_classes, EMB)]
    assert slots
    for ii in slots:  # slots of every row made non-zero, so that a dense update would move them
        optimizer.variables[ii].assign(rng.uniform(0.1, 1.0, (num_classes, EMB)).astype("float32"))
    before = [np.array(v) for v in [head.w, *optimizer.variables]]
    with tf.GradientTape() as tape:
        loss = partial_fc.PartialFCLoss(losses.ArcfaceLoss(scale=16.0))(labels, head([embedding, labels], training=True))
    gradient = tape.gradient(loss, head.w)
    assert isinstance(gradient, tf.IndexedSlices)
    optimizer.apply_gradients([(gradient, head.w)])
    rows = np.unique(gradient.indices.numpy())
    assert len(rows) == 8 and set(labels.numpy()) <= set(rows)
    others = np.setdiff1d(np.arange(num_classes), rows)
    after = [np.array(v) for v in [head.w, *optimizer.variables]]
    for old, new in zip(before, after):
        if old.shape[:1] == (num_classes,):
            np.testing.assert_array_equal(new[others], old[others])  # bit-identical

    # The sampled rows follow the stock optimizer applied densely to just those rows.
    reference_var = keras.Variable(before[0][rows])
    reference = make_optimizer()
    reference.build([reference_var])
    for variable, old in zip(reference.variables, before[1:]):
        variable.assign(old[rows] if old.shape[:1] == (num_classes,) else old)
    dense_rows = tf.math.unsorted_segment_sum(gradient.values, np.searchsorted(rows, gradient.indices.numpy()), len(rows))
    reference.apply_gradients([(dense_rows, reference_var)])
    np.testing.assert_allclose(after[0][rows], np.array(reference_var), rtol=1e-6, atol=1e-6)
    for ii in slots:
        np.testing.assert_allclose(after[1 + ii][rows], np.array(reference.variables[ii]), rtol=1e-6, atol=1e-6)


def test_rows_only_refuses_what_it_cannot_keep_sparse():
    with pytest.raises(ValueError, match="RMSprop"):
        partial_fc.rows_only(keras.optimizers.RMSprop())
    with pytest.raises(ValueError, match="clipnorm"):
        partial_fc.rows_only(keras.optimizers.SGD(clipnorm=1.0))
    with pytest.raises(ValueError, match="mixed_float16"):
        partial_fc.rows_only(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()))


def test_sample_rate_and_partial_fc_split_arguments():
    assert partial_fc.sample_rate_of(None) is None and partial_fc.sample_rate_of(1.0) is None
    assert partial_fc.sample_rate_of(0.1) == 0.1
    assert partial_fc.sample_rate_of(partial_fc_split=4) == 0.25
    for bad in (0, 1.5, "0.1", True):
        with pytest.raises(ValueError, match="partial_fc_sample_rate"):
            partial_fc.sample_rate_of(bad)
    with pytest.raises(ValueError, match="not both"):
        partial_fc.sample_rate_of(0.1, 2)
    with pytest.raises(ValueError, match="partial_fc_split"):
        partial_fc.sample_rate_of(partial_fc_split=-2)


FACE = functools.partial(colour_face, first_value=0, value_step=25)  # class c: gray 25 c, so ten classes stay apart


def partial_fc_schedule():
    return [{"loss": losses.ArcfaceLoss(scale=16.0), "epoch": 1, "optimizer": keras.optimizers.SGD(0.05, momentum=0.9)},
            {"loss": losses.ArcfaceLoss(scale=32.0), "epoch": 1}]


def test_train_saves_and_resumes_like_an_uninterrupted_run(workdir, image_folder):
    data_path = image_folder(num_classes=10, images_per_class=2, image=FACE)
    options = {"batch_size": 2, "seed": 0, "partial_fc_sample_rate": 0.3, "random_status": -1}
    keras.utils.set_random_seed(0)
    whole = train.Train(data_path, "whole.h5", basic_model=tiny_basic_model(), **options)
    whole.train(partial_fc_schedule(), 0)

    keras.utils.set_random_seed(0)
    first = train.Train(data_path, "part.h5", basic_model=tiny_basic_model(), **options)
    first.train(partial_fc_schedule()[:1], 0)
    options.pop("partial_fc_sample_rate")  # a resumed Partial FC head keeps its rate
    resumed = train.Train(data_path, "part.h5", model=os.path.join("checkpoints", "part.h5"), **options)
    resumed.train(partial_fc_schedule()[1:], 1)

    assert isinstance(resumed.output_layer, partial_fc.NormDensePartialFC) and resumed.partial_fc_sample_rate == 0.3
    for expected, got in zip(whole.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # In fit, too, a step leaves the rows outside its sample and their momentum bit-identical.
    head, (inputs, labels) = resumed.output_layer, next(iter(resumed._training_dataset()))
    index, _ = partial_fc.sample_classes(labels, 10, head.num_sample, np.array([head.seed, int(head.step.numpy())], np.int64))
    others = np.setdiff1d(np.arange(10), np.asarray(index))
    kernels = [v for v in [head.w, *resumed.optimizer.variables] if tuple(v.shape) == (10, 16)]
    before = [np.array(v) for v in kernels]
    resumed.model.train_on_batch(inputs, labels)
    assert len(kernels) == 2 and not np.array_equal(np.array(head.w)[np.asarray(index)], before[0][np.asarray(index)])
    for old, variable in zip(before, kernels):
        np.testing.assert_array_equal(np.array(variable)[others], old[others])

    saved = keras.models.load_model(os.path.join("checkpoints", "part.h5"))
    assert saved.get_layer("NormDense").w.shape == (10, 16)  # the full kernel, one matrix
    basic = keras.models.load_model(os.path.join("checkpoints", "part_basic_model_latest.h5"))
    assert len(basic.inputs) == 1 and basic.output_shape == (None, 16)
    assert not any(isinstance(layer, partial_fc.NormDensePartialFC) for layer in basic.layers)


def test_train_partial_fc_in_mixed_bfloat16_and_not_float16(workdir, image_folder):
    data_path = image_folder(num_classes=4, images_per_class=2, image=FACE)
    plan = {"loss": losses.ArcfaceLoss(scale=16.0), "epoch": 1, "optimizer": keras.optimizers.SGD(0.05, momentum=0.9)}
    tt = train.Train(data_path, "b.h5", basic_model=tiny_basic_model(), batch_size=4, partial_fc_sample_rate=0.5, mixed_precision="mixed_bfloat16")
    tt.train([plan], 0)
    assert np.isfinite(tt.my_hist.history["loss"]).all() and tt.output_layer.w.dtype == "float32"
    tt = train.Train(data_path, "h.h5", basic_model=tiny_basic_model(), batch_size=4, partial_fc_sample_rate=0.5, mixed_precision="mixed_float16")
    with pytest.raises(ValueError, match="mixed_float16"):
        tt.train([dict(plan, optimizer=keras.optimizers.SGD(0.05, momentum=0.9))], 0)


def test_train_refuses_a_softmax_plan_and_xla(workdir, image_folder):
    data_path = image_folder(num_classes=4, images_per_class=2, image=FACE)
    tt = train.Train(data_path, "s.h5", basic_model=tiny_basic_model(), batch_size=4, partial_fc_split=2)
    assert tt.partial_fc_sample_rate == 0.5
    with pytest.raises(ValueError, match="cosine head"):
        tt.train_single_scheduler(keras.losses.CategoricalCrossentropy(), epoch=1, optimizer="sgd")
    with pytest.raises(ValueError, match="XLA"):
        train.Train(data_path, "x.h5", basic_model=tiny_basic_model(), batch_size=4, partial_fc_sample_rate=0.5, jit_compile=True)
    for name, value in (("mixup_alpha", 0.2), ("sam_rho", 0.05), ("vpl_start_iters", 100)):
        with pytest.raises(ValueError, match="does not combine with " + name):
            train.Train(data_path, "c.h5", basic_model=tiny_basic_model(), batch_size=4, partial_fc_sample_rate=0.5, **{name: value})


def test_demo_with_rate_one_tenth_is_as_accurate_as_dense(workdir):
    """The demo (60 identities, batch 32), two epochs each way. At r = 0.1 the sample (6 classes) is smaller than a
    batch's distinct labels (about 25), so each step scores the batch's positives only: the rule's extreme case."""
    dense = demo.run_demo("demo_data", epochs=2)
    sampled = demo.run_demo("demo_data", epochs=2, partial_fc_sample_rate=0.1)
    assert dense > 0.75
    assert sampled >= dense - 0.03

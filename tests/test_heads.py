"""The output heads: which kind a plan gets (from the loss's declared traits), the refusal tables, carrying class
centers between kinds, a loaded model's head, and a new kind added by one registration."""
import keras
import numpy as np
import pytest

from keras_insightface import heads, losses, train
from keras_insightface.heads import registry
from keras_insightface.heads.base import HeadOptions, HeadRequest, OutputHead
from tests.helpers import EMB, NUM_CLASSES, tiny_basic_model

EMBEDDING_SHAPE = (None, EMB)


class HalfMarginLoss(losses._MarginSoftmaxLoss):
    """A margin loss no list names: `cos(theta) - 0.1`. Its traits come from the margin base class."""

    def _target_logit(self, target_cos, side_input):
        return target_cos - 0.1


def kind_of(loss, **options):
    request = HeadRequest(losses.guess_loss_type(loss), NUM_CLASSES, 1, losses.needs_feature_norm(loss), loss=loss)
    return registry.head_kind(request, HeadOptions(**options)).kind


def test_a_new_margin_loss_gets_the_cosine_head_from_its_base_class():
    assert losses.is_margin_loss(HalfMarginLoss()) and losses.takes_integer_labels(HalfMarginLoss())
    assert kind_of(HalfMarginLoss()) == "arcface"
    assert kind_of(keras.losses.CategoricalCrossentropy()) == "softmax"
    assert kind_of(losses.BatchHardTripletLoss()) == kind_of(losses.CenterLoss(4, 2)) == "embedding"
    assert kind_of(losses.ArcfaceLoss(), vpl_start_iters=100) == "vpl"
    assert kind_of(losses.ArcfaceLoss(), partial_fc_sample_rate=0.5) == "partial_fc"
    assert kind_of(losses.ArcfaceLoss(), shard_centers=True, num_replicas=2) == "sharded"
    assert kind_of(losses.ArcfaceLoss(), shard_centers=True, num_replicas=1) == "arcface"  # one replica: nothing to shard


# What turns each option or plan key on, to check every row of every refusal table.
RUN_OPTION_IN_USE = {"mixup_alpha": {"mixup_alpha": 0.2}, "sam_rho": {"sam_rho": 0.05}, "vpl_start_iters": {"vpl_start_iters": 100},
                     "jit_compile": {"jit_compile": True}, "partial_fc_sample_rate": {"partial_fc_sample_rate": 0.5},
                     "shard_centers": {"shard_centers": True, "num_replicas": 2}}
PLAN_KEY_IN_USE = {"a softmax loss": {"loss_type": "softmax"}, "lossTopK": {"loss_top_k": 3}, "a feature-norm loss": {"append_norm": True},
                   "centerloss": {"extra_outputs": ("centerloss",)}, "triplet": {"extra_outputs": ("triplet",)},
                   "distill": {"extra_outputs": ("distill",)}, "AcrTripLoss": {"loss": losses.AcrTripLoss(emb_shape=EMB)}}
REFUSALS = [(enabled_by, refused) for enabled_by, table in registry.refusal_table().items() for refused in table]


def test_every_option_and_plan_key_a_table_names_is_known():
    assert set(RUN_OPTION_IN_USE) == set(registry.RUN_OPTIONS) and set(PLAN_KEY_IN_USE) == set(registry.PLAN_KEYS)
    assert all(refused in RUN_OPTION_IN_USE or refused in PLAN_KEY_IN_USE for _, refused in REFUSALS)
    assert set(registry.refusal_table()) == {"partial_fc_sample_rate", "shard_centers", "vpl_start_iters"}


@pytest.mark.parametrize("enabled_by, refused", REFUSALS)
def test_each_refusal_of_each_table_is_raised_naming_both(enabled_by, refused):
    options = dict(RUN_OPTION_IN_USE[enabled_by], **RUN_OPTION_IN_USE.get(refused, {}))
    request = dict(dict(loss_type="arcface", classes=NUM_CLASSES), **PLAN_KEY_IN_USE.get(refused, {}))
    with pytest.raises(ValueError, match="{} does not combine with {}".format(enabled_by, refused)):
        registry.head_kind(HeadRequest(**request), HeadOptions(**options))
    if refused in RUN_OPTION_IN_USE:  # a run-wide combination fails when Train is built, before any training
        with pytest.raises(ValueError, match="{} does not combine with {}".format(enabled_by, refused)):
            registry.check_run_options(HeadOptions(**options))


def test_class_centers_carry_between_kinds_of_the_same_shape():
    options = HeadOptions(vpl_start_iters=100)
    cosine = registry.plan_head(HeadRequest("arcface", NUM_CLASSES), HeadOptions(), None, EMBEDDING_SHAPE)
    cosine.layer.build(EMBEDDING_SHAPE)
    vpl = registry.plan_head(HeadRequest("arcface", NUM_CLASSES), options, cosine, EMBEDDING_SHAPE)
    assert vpl is not cosine and vpl.kind == "vpl"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(vpl.layer.w), keras.ops.convert_to_numpy(cosine.layer.w))
    partial = registry.plan_head(HeadRequest("arcface", NUM_CLASSES), HeadOptions(partial_fc_sample_rate=0.5), vpl, EMBEDDING_SHAPE)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(partial.layer.w).T, keras.ops.convert_to_numpy(cosine.layer.w))
    sub_centers = registry.plan_head(HeadRequest("arcface", NUM_CLASSES, loss_top_k=2), HeadOptions(), partial, EMBEDDING_SHAPE)
    assert tuple(sub_centers.layer.w.shape) == (EMB, NUM_CLASSES * 2)  # another shape: fresh centers
    same = registry.plan_head(HeadRequest("arcface", NUM_CLASSES, loss_top_k=2), HeadOptions(), sub_centers, EMBEDDING_SHAPE)
    assert same is sub_centers


def test_a_loaded_models_head_is_found_by_its_kind():
    basic_model = tiny_basic_model()
    for request, options, kind in ((HeadRequest("arcface", 3, 2, True), HeadOptions(), "arcface"),
                                   (HeadRequest("softmax", 3), HeadOptions(), "softmax"),
                                   (HeadRequest("arcface", 3), HeadOptions(vpl_start_iters=100), "vpl"),
                                   (HeadRequest("arcface", 3), HeadOptions(partial_fc_sample_rate=0.5), "partial_fc")):
        built = registry.plan_head(request, options, None, EMBEDDING_SHAPE)
        model = built.training_model(basic_model, [], None, 0, "m")
        found = heads.head_of_model(model)
        assert found.kind == kind and found.layer is built.layer and found.signature() == built.signature()


@pytest.fixture()
def scaled_kind(monkeypatch):
    """A sixth kind defined here, in one place: a bias-free Dense of `scale` * cosines, for plans of type "scaled"."""

    class ScaledHead(OutputHead):
        kind, priority = "scaled", 50

        @classmethod
        def applies(cls, request, options):
            return request.loss_type == "scaled"

        def new_layer(self):
            return keras.layers.Dense(self.request.classes, use_bias=False, name="scaled", dtype="float32")

        def signature(self):
            return (self.kind, self.request.classes)

    monkeypatch.setattr(registry, "HEAD_KINDS", list(registry.HEAD_KINDS))
    registry.register(ScaledHead)
    return ScaledHead


def test_a_new_kind_registered_in_one_place_is_what_train_builds(dataset, scaled_kind):
    tt = train.Train(dataset, "scaled.h5", basic_model=tiny_basic_model(), batch_size=8)
    tt.train([{"loss": keras.losses.CategoricalCrossentropy(from_logits=True), "type": "scaled", "epoch": 1, "optimizer": "adam"}])
    assert type(tt.head) is scaled_kind and tt.model.get_layer("scaled") is tt.output_layer
    assert tuple(tt.output_layer.kernel.shape) == (EMB, NUM_CLASSES) and np.isfinite(tt.my_hist.history["loss"]).all()

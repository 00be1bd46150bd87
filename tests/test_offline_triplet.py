"""Offline triplet mining (`Train(samples_per_mining=N)`): the mining rule against brute force, pools, the dataset, a Train run."""
import os
import shutil

import cv2
import keras
import numpy as np
import pytest

from keras_insightface import losses, train, triplet_mining
from tests.helpers import tiny_basic_model

RNG = np.random.default_rng(11)


def brute_force_mining(embs, labels):
    """The original's rule, one anchor at a time: lowest-similarity same-class sample, highest-similarity other-class one."""
    positives, negatives = [], []
    for a in range(len(labels)):
        same = [j for j in range(len(labels)) if labels[j] == labels[a]]
        other = [j for j in range(len(labels)) if labels[j] != labels[a]]
        positives.append(min(same, key=lambda j: (float(embs[a] @ embs[j]), j)))
        negatives.append(max(other, key=lambda j: (float(embs[a] @ embs[j]), -j)))
    return np.array(positives), np.array(negatives)


def test_mining_rule_against_brute_force():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 3, 1, 0])  # class 3 alone: its positive is itself
    embs = RNG.normal(size=(10, 6))
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    expected = brute_force_mining(embs, labels)
    for chunk in (1024, 3):  # anchors compared with the pool in chunks
        positives, negatives = triplet_mining.mine_triplets(embs, labels, chunk=chunk)
        np.testing.assert_array_equal(positives, expected[0])
        np.testing.assert_array_equal(negatives, expected[1])
    assert positives[7] == 7
    with pytest.raises(ValueError, match="single class"):
        triplet_mining.mine_triplets(embs[:3], np.zeros(3))


def test_pools_are_whole_class_groups_of_two_classes_at_least():
    classes = np.repeat([0, 1, 2], [9, 4, 3])  # class 2 has fewer than 4 images: never drawn
    assert triplet_mining.pool_groups(10, 13, 4) == 2 and triplet_mining.pool_groups(0.5, 13, 4) == 1
    for seed in range(20):
        rng = np.random.default_rng(seed)
        groups = triplet_mining.class_groups(classes, 4, rng)
        assert groups.shape == (3, 4) and all(len(set(classes[group])) == 1 for group in groups)
        pool = triplet_mining.draw_pool(groups, classes, 2, rng)
        assert len(pool) == 8 and len(set(pool)) == 8 and set(classes[pool]) == {0, 1}  # two classes, always


def embed_by_hand(model, paths):
    images = np.stack([cv2.imread(path)[:, :, ::-1] for path in paths]).astype("float32")
    embs = model.predict((images - 127.5) / 128.0, verbose=0)
    return embs / np.linalg.norm(embs, axis=1, keepdims=True)


def test_miner_mines_the_current_models_hardest_triplets(dataset):
    from keras_insightface import data

    names, classes, _, _ = data.pre_process_folder(dataset)
    model = tiny_basic_model()
    miner = triplet_mining.OfflineTripletMiner(model, names, classes, samples_per_mining=16, batch_size=8, seed=1)
    assert (miner.pool_size, miner.image_per_class) == (16, 4)
    flat = miner.mine()
    anchors, positives, negatives = flat[0::3], flat[1::3], flat[2::3]
    assert len(flat) == 48 and len(set(anchors)) == 16
    embs = embed_by_hand(model, names[anchors])
    expected_pos, expected_neg = brute_force_mining(embs, classes[anchors])
    np.testing.assert_array_equal(positives, anchors[expected_pos])
    np.testing.assert_array_equal(negatives, anchors[expected_neg])
    assert not np.array_equal(miner.mine()[0::3], anchors)  # the next epoch draws another pool
    with pytest.raises(ValueError, match="samples_per_mining=4 gives 1 group"):
        triplet_mining.OfflineTripletMiner(model, names, classes, samples_per_mining=4)
    with pytest.raises(ValueError, match="must be > 0"):
        triplet_mining.OfflineTripletMiner(model, names, classes, samples_per_mining=-1)


def test_train_with_samples_per_mining_and_offline_triplet_loss(dataset, monkeypatch):
    mined = []
    original_mine = triplet_mining.OfflineTripletMiner.mine
    monkeypatch.setattr(triplet_mining.OfflineTripletMiner, "mine", lambda self: mined.append(1) or original_mine(self))
    tt = train.Train(dataset, "mining.h5", basic_model=tiny_basic_model(), batch_size=13, samples_per_mining=16, seed=0)
    assert tt.steps_per_epoch == 4  # 16 anchors -> 48 images in batches of 12
    images, labels = next(iter(tt.train_ds))
    labels = labels.numpy()
    assert images.shape == (12, 112, 112, 3)
    assert (labels[0::3] == labels[1::3]).all() and (labels[0::3] != labels[2::3]).all()
    tt.train([{"loss": losses.OfflineTripletLoss(alpha=1.5), "epoch": 2, "optimizer": "adam"}])
    assert len(mined) == 3  # one pool for the batch above, then one per epoch
    history = tt.model.history.history["loss"]
    assert len(history) == 2 and np.isfinite(history).all() and min(history) >= 0
    with pytest.raises(ValueError, match="batch_size >= 3"):
        train.Train(dataset, "mining2.h5", basic_model=tiny_basic_model(), batch_size=2, samples_per_mining=16)


def test_a_resumed_mining_run_equals_an_uninterrupted_one(dataset, workdir):
    """Pools and their augmentation depend on (seed, epoch) and the weights: kill after epoch 1, resume the seed's way."""

    def new_train(**kwargs):
        keras.utils.set_random_seed(0)
        basic_model = None if "model" in kwargs else tiny_basic_model()
        return train.Train(dataset, "mine.h5", basic_model=basic_model, batch_size=12, samples_per_mining=16, seed=0,
                           random_status=2, lr_base=0.01, **kwargs)

    def plan(epochs, **kwargs):
        return {"loss": losses.OfflineTripletLoss(alpha=1.5), "epoch": epochs, **kwargs}

    def weights(tt):
        return np.concatenate([ww.ravel() for ww in tt.model.get_weights()])

    reference = new_train()
    reference.train([plan(2, optimizer=keras.optimizers.SGD(0.01, momentum=0.9))], 0)
    shutil.rmtree("checkpoints")
    first = new_train()
    first.train([plan(1, optimizer=keras.optimizers.SGD(0.01, momentum=0.9))], 0)
    resumed = new_train(model=os.path.join("checkpoints", "mine.h5"))
    resumed.train([plan(1)], 1)
    np.testing.assert_allclose(weights(resumed), weights(reference), rtol=1e-5, atol=1e-6)
    assert not np.allclose(weights(first), weights(reference))

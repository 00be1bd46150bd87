"""The training model of `Train` when a plan needs more than Keras' plain step: sharpness-aware minimization
(`Train(sam_rho=...)`) and the prototype queue of a `models.NormDenseVPL` head (`Train(vpl_start_iters=...)`).

Usage:
    from keras_insightface import sam
    model = sam.SAMModel(basic_model.inputs, head(basic_model.outputs[0]), rho=0.05)
    model.compile(optimizer="sgd", loss=losses.ArcfaceLoss())
"""
import keras
import tensorflow as tf

from . import losses

_TINY_NORM = 1e-12  # added to the gradient norm, as the original


@keras.saving.register_keras_serializable(package="keras_insightface")
class SAMModel(keras.Model):
    """A functional model whose training step is sharpness-aware minimization (Foret et al., "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", ICLR 2021) when `rho > 0`, as the original's SAMModel:
    gradients `g` at the weights `w` (loss with the regularization losses), `w + rho * g / (||g|| + 1e-12)` (the
    global norm over all trainable variables), gradients there, `w` restored, the optimizer applies the second
    gradients. Metrics are those of the first forward pass. Both forward passes run in training mode (BatchNorm
    statistics and stateful losses update twice per step, as the original). `rho=0` is Keras' own step.

    After each step every layer with an `update_queue` (`models.NormDenseVPL`; models.py imports this module, so
    it is found by that method, not by its class) gets the batch's labels: of the first target,
    integer labels or the class of largest weight of label rows (the original's `argmax`).
    TensorFlow backend (it follows Keras' TensorFlow `train_step`, loss scaling of mixed float16 included).
    Usage: model = SAMModel(inputs, outputs, rho=0.05)
    """

    def __init__(self, *args, rho=0.05, **kwargs):
        super().__init__(*args, **kwargs)
        self.rho = float(rho)
        if self.rho < 0:
            raise ValueError("SAMModel: rho must be >= 0, got {!r}".format(rho))

    def train_step(self, data):
        if self.rho > 0:
            logs = self._sharpness_aware_step(data)
        else:
            logs = super().train_step(data)
        self._update_prototype_queues(keras.utils.unpack_x_y_sample_weight(data)[1])
        return logs

    def _loss(self, x, y, sample_weight):
        """(predictions, loss, loss scaled for the optimizer) of one forward pass in training mode."""
        y_pred = self(x, training=True)
        loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        return y_pred, loss, self.optimizer.scale_loss(loss)

    def _sharpness_aware_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            y_pred, loss, scaled_loss = self._loss(x, y, sample_weight)
        batch_size = tf.shape(tf.nest.flatten(x)[0])[0]
        self._loss_tracker.update_state(_whole_batch_loss(loss), sample_weight=batch_size)
        gradients = [tf.zeros_like(var) if grad is None else grad for var, grad in zip(variables, tape.gradient(scaled_loss, variables))]
        perturbations = self.perturbations(gradients)
        for var, perturbation in zip(variables, perturbations):
            var.assign_add(perturbation)
        with tf.GradientTape() as tape:
            _, _, scaled_loss = self._loss(x, y, sample_weight)
        sharp_gradients = tape.gradient(scaled_loss, variables)
        for var, perturbation in zip(variables, perturbations):
            var.assign_sub(perturbation)
        self.optimizer.apply_gradients(zip(sharp_gradients, variables))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def perturbations(self, gradients):
        """`rho * g / (||g|| + 1e-12)` per variable, `||g||` the global norm; zeros when it is not finite (an overflow
        of float16 loss scaling, whose step the optimizer skips).  Usage: model.perturbations(gradients)"""
        norm = tf.linalg.global_norm(gradients)
        finite, scale = tf.math.is_finite(norm), self.rho / (norm + _TINY_NORM)
        return [tf.where(finite, grad * tf.cast(scale, grad.dtype), tf.zeros_like(grad)) for grad in gradients]

    def _update_prototype_queues(self, y):
        heads = [layer for layer in self.layers if callable(getattr(layer, "update_queue", None))]  # models.NormDenseVPL
        if heads:
            labels = losses.hard_labels(tf.nest.flatten(y)[0])
            # Keras runs one more step function at the end of a dataset of unknown length, whose input fails: ops
            # without a data dependency (the step counter) would still run there.
            with tf.control_dependencies([labels]):
                for head in heads:
                    head.update_queue(labels)

    def get_config(self):
        config = super().get_config()
        config["rho"] = self.rho
        return config


def _whole_batch_loss(loss):
    """The loss of the global batch: Keras divides each replica's loss by the replica count."""
    return loss * tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)


# Checkpoints in the legacy `.h5` format name a model by its class name only: this lets them load without
# custom_objects, like the registered layers.
keras.saving.get_custom_objects()[SAMModel.__name__] = SAMModel

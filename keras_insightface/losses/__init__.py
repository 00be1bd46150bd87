"""Losses for face recognition: margin softmax losses on cosine logits, center, triplet and distillation.

The margin losses take integer class labels `y_true` (int [batch], or [batch, 1]; label rows [batch, classes], one-hot
or the soft rows of mixup, are accepted too, told apart by rank and width) and the cosine output of `models.NormDense`
as `y_pred`. Each replaces the target cosine of every sample by its margined value, multiplies all logits by
`scale` and applies softmax cross-entropy. With integer labels only the target column is computed apart and the
margin is added in place, so an ArcFace / CosFace step keeps one logits-size buffer live beside
its inputs, like plain softmax: see docs/losses.md for the measurement.

Every loss declares what it can do (`loss_type`, `reads_integer_labels`, `reads_soft_labels`, `uses_feature_norm`,
`reads_embedding_and_cosines`, see `base.py`); `Train` and the output heads read those traits with `trait(loss, name)`.

| module         | what                                                                          |
| -------------- | ----------------------------------------------------------------------------- |
| `base.py`      | traits, labels, softmax cross-entropy, the margin base class, `OneHotLabels`   |
| `margin.py`    | the margin losses, softmax on cosines or probabilities, accuracy of cosines    |
| `embedding.py` | center, triplet and distillation losses                                       |

Usage:
    from keras_insightface import losses
    model.compile(optimizer="sgd", loss=losses.ArcfaceLoss(scale=64.0))
"""
from .base import (  # noqa: F401
    KERAS_TRAITS, TRAIT_DEFAULTS, OneHotLabels, _MarginSoftmaxLoss, class_labels, combined_margin, guess_loss_type, hard_labels,
    is_margin_loss, is_one_hot, needs_feature_norm, takes_integer_labels, takes_soft_labels, trait, with_traits,
)
from .embedding import (  # noqa: F401
    ArcBatchHardTripletLoss, BatchAllTripletLoss, BatchAllTripletLossHermans, BatchHardTripletLoss, BatchHardTripletLossEuclidean,
    BatchHardTripletLossEuclideanAutoAlpha, CenterLoss, CenterLossCosine, OfflineArcTripletLoss, OfflineTripletLoss,
    distiller_loss_cosine, distiller_loss_euclidean,
)
from .margin import (  # noqa: F401
    AcrTripLoss, AdaCosLoss, AdaFaceLoss, AirFaceLoss, ArcfaceLoss, ArcfaceLossSimple, CosFaceLoss, CurricularFaceLoss,
    DistillKLDivergenceLoss, MagFaceLoss, MarginSoftmax, accuracy_after_embedding, accuracy_without_norm, scale_softmax,
)

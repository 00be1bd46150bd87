"""No classification head: center and triplet plans train the embedding itself (an `Identity` output named by the
plan type). The previous class head is kept by `Train` for the next plan that scores classes.

Usage:
    head = IdentityHead(HeadRequest("triplet", classes), HeadOptions())
"""
import keras

from . import registry
from .base import OutputHead

EMBEDDING_TYPES = ("center", "triplet")


@registry.register
class IdentityHead(OutputHead):
    """The embedding as the first output, for losses on embeddings (`loss_type` "center" or "triplet")."""

    kind = "embedding"
    priority = 10
    scores_classes = False

    @classmethod
    def applies(cls, request, options):
        return request.loss_type in EMBEDDING_TYPES

    def new_layer(self):
        return keras.layers.Identity(name=self.request.loss_type, dtype="float32")

    def signature(self):
        return (self.kind, self.request.loss_type)

    def metrics(self, loss):
        return []

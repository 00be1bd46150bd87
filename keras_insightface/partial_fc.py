"""The seed-era name of the Partial FC head module: `keras_insightface.partial_fc` is `keras_insightface.heads.partial_fc`
(the same module object).  Usage: from keras_insightface import partial_fc
"""
import sys

from .heads import partial_fc

sys.modules[__name__] = partial_fc

"""The earlier name of the sharded head module: `keras_insightface.sharded_head` is `keras_insightface.heads.sharded`
(the same module object).  Usage: from keras_insightface import sharded_head
"""
import sys

from .heads import sharded

sys.modules[__name__] = sharded

"""Seed name from a checkout: `backbones` is `keras_insightface.backbones` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "backbones")

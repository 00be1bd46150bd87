"""Seed name from a checkout: `losses` is `keras_insightface.losses` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "losses")

"""Seed name from a checkout: `myCallbacks` is `keras_insightface.myCallbacks` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "myCallbacks")

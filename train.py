#!/usr/bin/env python3
"""Seed name from a checkout: `train` is `keras_insightface.train` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "train")

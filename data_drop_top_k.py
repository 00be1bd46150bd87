#!/usr/bin/env python3
"""Seed name from a checkout: `data_drop_top_k` is `keras_insightface.data_drop_top_k` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "data_drop_top_k")

#!/usr/bin/env python3
"""Seed name from a checkout: `data_distiller` is `keras_insightface.data_distiller` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "data_distiller")

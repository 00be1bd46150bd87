#!/usr/bin/env python3
"""Seed name from a checkout: `prepare_data` is `keras_insightface.prepare_data` (see keras_insightface/_flat.py)."""
from keras_insightface._flat import alias

alias(__name__, "prepare_data")

"""Backbones: one module per family, each builder returns a headless keras.Model.

Usage:
    from backbones import resnet, mobile_facenet, efficientnet
    backbone = resnet.ResNet50(input_shape=(112, 112, 3))
"""

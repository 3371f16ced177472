"""Datasets (GTA5 source, Cityscapes target) and the label tables in :mod:`dataset.labels`."""

"""Datasets: labelled image sets in [0, 1] (bundled digits, IDX, CIFAR batches, image folders) and their splits."""

"""The offline compute step: train or load a network, probe every unit, publish a warehouse run."""

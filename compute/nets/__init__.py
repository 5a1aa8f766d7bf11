"""Networks and their probe points: the model registry, fx discovery of ReLU call sites, activation hooks, partial forward passes and receptive fields."""

"""Unrolled Gauss-Newton with learnable parameters: networks, self-supervised losses, hypergradients, training."""

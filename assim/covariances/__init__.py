"""Background covariances B through B^{1/2} (diagonal, spectral, diffusion, masked, blocks) and diagonal R."""

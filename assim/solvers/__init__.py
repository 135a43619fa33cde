"""Matrix-free Gauss-Newton and its strategies: Krylov inner solves, preconditioners, inner models, cycling."""

"""Variational problems Gauss-Newton solves: strong- and weak-constraint 4D-Var, parameter control, twin experiments."""

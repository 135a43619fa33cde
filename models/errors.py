"""The project's exception hierarchy: every error a user can cause is an `AssimError`."""


class AssimError(Exception):
    """Base class of every error a user can cause; its message says what to change."""


class InputError(AssimError, ValueError):
    """An argument has the wrong shape, sign or value."""


class GridMismatchError(InputError):
    """A field, operator or observation does not match the grid it is used on."""


class NonFiniteError(InputError):
    """A state, parameter or observation holds NaN or infinity where finite values are needed."""


class StabilityError(AssimError):
    """A time step violates the stability limit of an explicit part of a scheme."""


class ConvergenceError(AssimError):
    """An iterative solver did not reach its tolerance."""

import models  # noqa: F401  (enables float64 once, before any test builds arrays)

"""Case files: the schema, building an experiment from it, and the run, train, discover and sweep commands."""

"""Tools for the developers: the trajectory comparison of a restructuring and the docs' figures,
each a ``python -m benchmarks`` command (see :data:`benchmarks.cli.SCRIPTS`)."""

"""Studies: one measurement each, a ``python -m benchmarks`` command of its own (see
:data:`benchmarks.cli.SCRIPTS`)."""

"""Runs: the typed configuration, the run folder, the pipeline that sequences the stages, and
the report."""

"""Prefect flows and the CLI; both call the engine in `pipelines`, neither holds pipeline logic."""

"""Orchestration: the Prefect flows, the `wikiembed` CLI, and the task wrappers over `tasks/`."""

"""Pipeline steps: download, shard, embed, checkpoint, upload, and the run store they share.

Each module is one step (or the store) as plain, typed functions; the Prefect
`@task` wrappers live in `flows/` so every step is testable without Prefect.
"""

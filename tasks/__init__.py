"""The Prefect tasks, one module per pipeline step: download, shard, embed (with its checkpoint), export.

Each `@task` is the step itself, small and typed, taking references (store
path, generation, shard id), never models or data. The work is done by the
library (`wikiembed`); tests call a task's function through `.fn`. Installed
as `wikiembed.tasks`.
"""

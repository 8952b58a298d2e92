"""The Prefect tasks, one module per pipeline step: download, calibrate, embed (chunk to
checkpoint, one shard), export, and the improve loop's finetune and compare.

Each `@task` is the step itself, small and typed, taking the run's executor and references
(store path, generation, shard id), never models or data. The work is done by the library
(`wikiembed`, `wikiembed.executors`); tests call a task's function through `.fn`. Installed
as `wikiembed.tasks`.
"""

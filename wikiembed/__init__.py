"""wikiembed's library: sources, chunking, the run store, models, backends and publishing.

Plain, typed functions with no Prefect in them. The Prefect tasks (`tasks/`),
flows and CLI (`flows/`) and the Modal apps (`modal_workers/`) are built on
top of this package and install as its subpackages `wikiembed.tasks`,
`wikiembed.flows` and `wikiembed.modal_workers`.
"""

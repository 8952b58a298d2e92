"""`wikiembed serve`: an HTTP search service over a store's published generation, and the feedback it records.

- `generation`: one published generation held open for a long-lived reader, and `PublishedStore`,
  which follows the store's `current` link (and a store path that is itself a link) between batches;
- `batcher`: concurrent requests embedded together, one forward pass per batch;
- `feedback`: judged queries appended to a jsonl file in the format `eval --queries`, `finetune --pairs`
  and `improve --pairs` read, each line fsynced before it is acknowledged;
- `app`: the FastAPI application (search, feedback, health, the page) and its limits;
- `page`: the page a person searches from.

Touches: the served store (read only), the feedback file (appended), the loopback or given address.
"""

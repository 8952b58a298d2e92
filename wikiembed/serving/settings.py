"""What `wikiembed serve` is started with (the CLI's flags are made from these fields).

Touches: nothing.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

TOKEN_ENV = "WIKIEMBED_SERVE_TOKEN"


class ServeSettings(BaseModel):
    """What `wikiembed serve` was started with."""

    model_config = ConfigDict(extra="forbid")

    store: str = Field(description="The run store to serve (its published generation); a link to a store is followed as it is repointed.")
    host: str = Field("127.0.0.1", description="Address to listen on; one that is not loopback needs --token.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free one).")
    feedback: str | None = Field(None, description="A .jsonl file POST /feedback appends judged queries to (improve --pairs reads it).")
    token: str | None = Field(None, min_length=16, description=f"Bearer token that POST /feedback requires (default: ${TOKEN_ENV}); needed off loopback.")
    cors_origin: list[str] = Field(default_factory=list, description="Origins a browser may call the service from (none by default).")
    form: str = Field("float32", description="The stored form searched: float32, float16, int8, binary, or e.g. int8@128.")

"""Real text for retrieval tests: Python's reference topics, shipped with every CPython.

`pydoc_data.topics` holds the language reference sections `help()` shows (about 80, 0.2-60 kB
each). Each becomes an article: id = the topic key, title = the section's heading, text = the
section without its heading (so a title query has to find the article by meaning, not by
copying its first line). Topics whose text repeats an earlier one ('else' is 'if') are dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

# Leetspeak ("7h3 \"br34k\" 57473m3n7"): a title in it is word pieces the base model has no meaning for, so it ranks
# the title's topic poorly; a fine-tune on such titles learns the common words, the improve loop's better model.
LEET = str.maketrans({"a": "4", "e": "3", "o": "0", "i": "1", "s": "5", "t": "7"})


def python_topics(dest: Path, max_chars: int | None = None) -> Path:
    """Write the topics (those up to `max_chars` long, if given) as a jsonl source; return its path."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", encoding="utf-8") as fh:
        for key in sorted(topics):
            lines = topics[key].strip().splitlines()
            title = lines[0].strip()
            body = "\n".join(lines[2:] if len(lines) > 1 and set(lines[1].strip()) <= {"*", "=", "-"} else lines[1:]).strip()
            if not body or body in seen or (max_chars is not None and len(body) > max_chars):
                continue
            seen.add(body)
            fh.write(json.dumps({"id": key, "title": title, "url": f"pydoc:{key}", "text": body}) + "\n")
    return dest

"""The eval step: after a complete run, check retrieval with titles as queries (wikiembed/evaluate.py).

Runs before the export, so the dataset card it writes carries the result; the UI gets it as a
markdown artifact.

Touches: the generation's data files (read), `eval.json` and `README.md` (written), the model.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from wikiembed.card import eval_section
from wikiembed.evaluate import evaluate
from wikiembed.results import EvalHeadline


@task(name="eval")
def eval_task(store: str, gen: str, sample: int, trust_remote_code: bool = False) -> EvalHeadline:
    """Evaluate every stored form of `gen` on `sample` articles; return the headline figures. `trust_remote_code`:
    the run's own consent to the model's code (`--trust-remote-code`), which embeds the queries too."""
    result = evaluate(store, gen=gen, sample=sample, forms=["all"], trust_remote_code=trust_remote_code)
    create_markdown_artifact("\n".join(eval_section(result.to_json())), key="wikiembed-eval", description="retrieval check")
    return EvalHeadline(result.n, result.recall_at_1, result.recall_at_10, result.mrr)

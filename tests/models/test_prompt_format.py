"""One encoding of a prompt for training, decoding, evaluation and serving, in either prompt
format, with a Llama-3-style tokenizer built here (BOS from the post-processor, a chat template
that writes BOS itself): the four paths feed the same ids, BOS exactly once."""

from __future__ import annotations

import pytest

from rac.config import ConfigError, from_dict
from rac.models import load_tokenizer
from rac.models.prompts import PROMPT_FORMAT_FILE, build_prompt, prompt_token_ids, write_prompt_format
from rac.testing.tiny import demo_texts, save_tiny_model

BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
#: A chat template in the Llama-3 layout: BOS, header-delimited turns each closed by <|eot_id|>.
LLAMA3_STYLE_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")

ROW = {"id": "r1", "topic_id": "1", "split": "t2", "query": "dinosaur extinction",
       "passages": [{"doc_id": "d1", "text": "An asteroid struck the Yucatan 66 million years ago."},
                    {"doc_id": "d2", "text": "Volcanic eruptions in the Deccan Traps changed the climate."}],
       "question": "Are you asking about the asteroid impact?", "chosen": "Do you mean the asteroid?",
       "rejected": "Do you like dinosaurs?"}


def llama3_style_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", EOT]
    tok.train_from_iterator(demo_texts() + [ROW["query"], *(p["text"] for p in ROW["passages"])],
                            trainer=trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token="<|end_of_text|>",
                                   chat_template=LLAMA3_STYLE_TEMPLATE)


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("llama3") / "model", tokenizer=llama3_style_tokenizer())


def four_encodings(model_dir, out_dir):
    """The prompt ids of ROW as training, decoding, evaluation and serving build them."""
    from rac.decoding.config import NegativesConfig
    from rac.decoding.stage import NegativesBatch
    from rac.evaluation.config import EvaluateConfig, SystemConfig
    from rac.evaluation.stage import GenerateBatch
    from rac.serving.config import ServeConfig
    from rac.serving.generator import QuestionGenerator
    from rac.serving.service import ClarifyService
    from rac.training.data import IGNORE_INDEX, sft_examples

    budget = 400
    example = sft_examples([ROW], load_tokenizer(model_dir, padding_side="right"), True, budget + 40, 40)[0]
    training = example["input_ids"][:example["labels"].index(next(x for x in example["labels"] if x != IGNORE_INDEX))]

    negatives = NegativesBatch(NegativesConfig(grounded_model=str(model_dir), ungrounded_model=str(model_dir),
                                               output_dir=str(out_dir), max_prompt_tokens=budget), {})
    grounded_text = negatives._prompts(ROW)[0]
    decoding = negatives.decoder._encode([grounded_text])[0][0].tolist()

    evaluate = GenerateBatch(EvaluateConfig(output_dir=str(out_dir), max_prompt_tokens=budget,
                                            systems=[SystemConfig("rac", str(model_dir))]),
                             SystemConfig("rac", str(model_dir)))
    evaluation = evaluate._prompt_ids(ROW)[0]

    cfg = ServeConfig(model_path=str(model_dir))
    cfg.generator.max_prompt_tokens = budget
    service = ClarifyService(cfg, retriever=None, tokenizer=load_tokenizer(model_dir), generate=None)
    serving = QuestionGenerator(model_dir).encode([service.prompt(ROW["query"], ROW["passages"])])[0]
    return {"training": training, "decoding": decoding, "evaluation": evaluation, "serving": serving}


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_training_decoding_evaluation_and_serving_feed_the_same_ids_with_bos_once(llama3_dir, tmp_path,
                                                                                  prompt_format):
    write_prompt_format(llama3_dir, prompt_format)  # as the training export records it
    tokenizer = load_tokenizer(llama3_dir)
    bos = tokenizer.bos_token_id
    encodings = four_encodings(llama3_dir, tmp_path)
    assert encodings["training"] == encodings["decoding"] == encodings["evaluation"] == encodings["serving"]
    ids = encodings["training"]
    assert ids[0] == bos and ids.count(bos) == 1
    text = tokenizer.decode(ids)
    assert ("<|start_header_id|>user<|end_header_id|>" in text) == (prompt_format == "chat")
    if prompt_format == "chat":  # the assistant's turn is open: the question comes next
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Query: dinosaur extinction" in text and "[2] Volcanic eruptions" in text


def test_the_prompt_budget_counts_the_chat_template_and_bos(llama3_dir):
    write_prompt_format(llama3_dir, "chat")
    tokenizer = load_tokenizer(llama3_dir)
    full = build_prompt(tokenizer, ROW["query"], ROW["passages"])
    assert full.num_tokens == len(prompt_token_ids(tokenizer, full.text))
    fitted = build_prompt(tokenizer, ROW["query"], ROW["passages"], max_tokens=full.num_tokens - 5)
    assert fitted.trimmed and len(prompt_token_ids(tokenizer, fitted.text)) <= full.num_tokens - 5


def test_chat_needs_a_chat_template_and_a_model_keeps_its_format(tmp_path, llama3_dir):
    from rac.training.config import SFTConfig

    plain_dir = save_tiny_model(tmp_path / "plain")  # the tiny tokenizer has no chat template
    with pytest.raises(ConfigError, match=r"^prompt.format is chat but the tokenizer of .* has no chat template"):
        load_tokenizer(plain_dir, prompt_format="chat")
    assert not (plain_dir / PROMPT_FORMAT_FILE).exists() and load_tokenizer(plain_dir).rac_prompt_format == "plain"
    write_prompt_format(llama3_dir, "chat")
    sft = from_dict(SFTConfig, {"model": {"path": str(llama3_dir)}})
    with pytest.raises(ConfigError, match=r"^prompt.format is plain but model.path .* was trained with prompt "
                                          r"format chat; set prompt.format: chat$"):
        sft.prompt_format()
    assert from_dict(SFTConfig, {"model": {"path": str(llama3_dir)}, "prompt": {"format": "chat"}}).prompt_format() \
        == "chat"

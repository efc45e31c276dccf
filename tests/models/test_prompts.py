import pytest

from rac.models import PromptTooLongError, build_prompt
from rac.models.prompts import QUESTION_SLOT
from rac.testing.tiny import demo_texts, train_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(demo_texts())


PASSAGES = [{"text": "The jaguar is the largest cat of the Americas. " * 6},
            {"text": "Jaguar is a British maker of luxury cars. " * 6},
            {"text": "Jacksonville Jaguars play American football. " * 6}]


def test_grounded_and_ungrounded_prompts(tokenizer):
    grounded = build_prompt(tokenizer, "jaguar", PASSAGES)
    assert "Query: jaguar" in grounded.text and "[1] The jaguar" in grounded.text
    assert "[3] Jacksonville" in grounded.text
    assert grounded.text.endswith(QUESTION_SLOT) and not grounded.trimmed
    ungrounded = build_prompt(tokenizer, "jaguar", PASSAGES, grounded=False)
    assert "Passages" not in ungrounded.text and "[1]" not in ungrounded.text
    assert ungrounded.text.endswith(QUESTION_SLOT) and "Query: jaguar" in ungrounded.text


def test_budget_trims_passages_first_never_the_query(tokenizer):
    full = build_prompt(tokenizer, "jaguar", PASSAGES)
    budget = full.num_tokens - 60
    trimmed = build_prompt(tokenizer, "jaguar", PASSAGES, max_tokens=budget)
    assert trimmed.trimmed and trimmed.num_tokens <= budget
    assert trimmed.passages_used < 3 or trimmed.text.count(" ...") == 1
    assert "Query: jaguar" in trimmed.text and trimmed.text.endswith(QUESTION_SLOT)
    assert trimmed.text.startswith(full.text.split("[1]")[0])
    assert len(tokenizer(trimmed.text, add_special_tokens=False)["input_ids"]) == trimmed.num_tokens
    # Only the instruction and the query left: passages all dropped, slot kept.
    bare = build_prompt(tokenizer, "jaguar", [], max_tokens=10_000)
    tight = build_prompt(tokenizer, "jaguar", PASSAGES, max_tokens=bare.num_tokens + 3)
    assert tight.passages_used == 0 and tight.text.endswith(QUESTION_SLOT)


def test_query_that_cannot_fit_is_an_error(tokenizer):
    with pytest.raises(PromptTooLongError, match="more than the prompt budget of 20"):
        build_prompt(tokenizer, "jaguar " * 50, PASSAGES, max_tokens=20)


MULTIBYTE = "東京 café 🚀"


def test_ids_cut_inside_a_character_decode_to_whole_characters(tokenizer):
    from rac.models.prompts import decode_whole

    ids = tokenizer(MULTIBYTE, add_special_tokens=False)["input_ids"]
    # The byte-level tokenizer splits these characters over several tokens: some cuts land inside one.
    assert any(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))
    for k in range(len(ids) + 1):
        text = decode_whole(tokenizer, ids[:k])
        assert "\ufffd" not in text and MULTIBYTE.startswith(text), (k, text)
    assert decode_whole(tokenizer, ids) == MULTIBYTE


def test_trimmed_passage_keeps_whole_characters(tokenizer):
    passages = [{"text": "東京タワー 🚀 " * 40}]
    full = build_prompt(tokenizer, "tokyo", passages)
    for cut in range(1, 12):
        trimmed = build_prompt(tokenizer, "tokyo", passages, max_tokens=full.num_tokens - 20 * cut - 1)
        assert trimmed.trimmed and "\ufffd" not in trimmed.text, trimmed.text[-60:]

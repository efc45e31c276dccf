"""Batched greedy generation: one left-padded generate gives each prompt what it gets alone."""

from __future__ import annotations

import pytest

from rac.models.prompts import build_prompt, prompt_token_ids
from rac.serving.generator import BatchStats, QuestionGenerator, question_from_text


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return QuestionGenerator(tiny_model_dir, torch_threads=1)


def test_batch_equals_one_at_a_time(generator):
    prompts = [build_prompt(generator.tokenizer, q, [p], grounded=True).text for q, p in [
        ("jaguar", "Jaguar is a British car brand."),
        ("mars", "Mars is the fourth planet from the Sun, with two small moons and the tallest volcano."),
        ("python", "Python"),
    ]]
    limits = [12, 5, 9]
    # Prompts of different lengths: left padding must not change any row's greedy output.
    assert len({len(prompt_token_ids(generator.tokenizer, p)) for p in prompts}) == 3
    batched = generator.generate(prompts, limits)
    alone = [generator.generate([p], n)[0] for p, n in zip(prompts, limits, strict=True)]
    assert batched == alone
    assert generator.generate([], 4) == []


def test_each_row_keeps_its_own_token_limit(generator):
    prompt = build_prompt(generator.tokenizer, "jaguar", ["Jaguar is a car."]).text
    short, long_ = generator.generate([prompt, prompt], [3, 20])
    ids = generator.tokenizer(short, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 3
    # The shorter row is cut to its own limit, not padded out to the batch's longest.
    assert short == generator.generate([prompt], 3)[0]
    assert long_ == generator.generate([prompt], 20)[0]


def test_question_is_the_first_line_up_to_the_question_mark():
    assert question_from_text(" Do you mean the car? Or the cat?\nmore") == "Do you mean the car?"
    assert question_from_text("\n  Which jaguar\nnext") == "Which jaguar"
    assert question_from_text("") == ""


def test_batch_stats_count_batches():
    stats = BatchStats()
    for size in (1, 4, 4, 2):
        stats.record(size, 0.1)
    snap = stats.snapshot()
    assert snap["requests"] == 11 and snap["batches"] == 4 and snap["max_batch_size_seen"] == 4
    assert snap["batch_sizes"] == {"1": 1, "2": 1, "4": 2}


def test_scheduler_merges_what_arrives_while_the_model_is_busy():
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from rac.serving.generator import GenerationScheduler

    calls: list[list[str]] = []
    release = threading.Event()

    def generate(prompts: list[str], limits: list[int]) -> list[str]:
        calls.append(list(prompts))
        if len(calls) == 1:
            release.wait(5)  # the model is busy with the first batch until released
        return [f"q:{p}:{n}" for p, n in zip(prompts, limits, strict=True)]

    async def main() -> list[list[str]]:
        scheduler = GenerationScheduler(generate, max_batch_size=3, executor=ThreadPoolExecutor(1))
        first = asyncio.create_task(scheduler.submit(["a"], [1]))
        await asyncio.sleep(0.05)
        # Three more small batches arrive while the first generates: two calls of at most 3, not three calls.
        later = [asyncio.create_task(scheduler.submit(p, [2] * len(p))) for p in (["b", "c"], ["d"], ["e"])]
        await asyncio.sleep(0.05)
        release.set()
        results = [await first] + [await t for t in later]
        assert scheduler.stats.snapshot()["batches"] == 3
        return results

    results = asyncio.run(main())
    assert results == [["q:a:1"], ["q:b:2", "q:c:2"], ["q:d:2"], ["q:e:2"]]
    assert calls == [["a"], ["b", "c", "d"], ["e"]]


def test_scheduler_passes_a_generation_error_to_its_callers():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from rac.serving.generator import GenerationScheduler

    def broken(prompts: list[str], limits: list[int]) -> list[str]:
        raise RuntimeError("out of memory")

    async def main() -> None:
        scheduler = GenerationScheduler(broken, max_batch_size=4, executor=ThreadPoolExecutor(1))
        with pytest.raises(RuntimeError, match="out of memory"):
            await scheduler.submit(["a", "b"], [1, 1])

    asyncio.run(main())


class _ScriptedModel:
    """A causal LM stand-in that continues every prompt with the same token ids (up to max_new_tokens)."""

    def __init__(self, continuation: list[int]):
        import torch

        self.continuation = continuation
        self._param = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._param])

    def generate(self, input_ids, max_new_tokens, **kwargs):
        import torch

        new = torch.tensor([self.continuation[:max_new_tokens]] * input_ids.shape[0])
        return torch.cat([input_ids, new], dim=1)


def test_question_cut_at_the_token_limit_never_ends_in_a_broken_character(generator, monkeypatch):
    text = "東京 café 🚀"
    ids = generator.tokenizer(text, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(generator, "model", _ScriptedModel(ids))
    prompt = build_prompt(generator.tokenizer, text, ["Tokyo"], grounded=True).text
    # Every limit, including the ones that cut the emoji or a kanji mid-character.
    questions = generator.generate([prompt] * len(ids), list(range(1, len(ids) + 1)))
    for limit, question in enumerate(questions, 1):
        assert "\ufffd" not in question and text.startswith(question), (limit, question)
    assert questions[-1] == text
    assert questions[-2] == "東京 café"

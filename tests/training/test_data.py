"""The tokenized datasets the driver writes once for every worker."""

from rac.training.data import load_dataset_dir, write_dataset


def test_same_examples_keep_the_dataset_and_its_caches_other_examples_replace_it(tmp_path):
    examples = [{"id": "a", "prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4], "length": 3}]
    path = write_dataset(examples, tmp_path / "train")
    cache = path / "cache-ref-logps.arrow"  # what TRL's precompute leaves beside the dataset
    cache.write_text("cached")
    write_dataset(examples, tmp_path / "train")  # a resumed run: same rows, same ids
    assert cache.read_text() == "cached"
    assert load_dataset_dir(path)["prompt_ids"] == [[1, 2]]
    write_dataset([{**examples[0], "chosen_ids": [5]}], tmp_path / "train")  # the rows changed
    assert not cache.exists() and load_dataset_dir(path)["chosen_ids"] == [[5]]
    assert load_dataset_dir(tmp_path / "absent") is None

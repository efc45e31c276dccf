"""WordNet for METEOR: the setup from Debian's packages, and METEOR against nltk's own.

``make setup`` (what CI runs before the suite) puts WordNet into the environment's NLTK folder,
so the METEOR test runs there. Without WordNet it fails, naming the fix; it is skipped only on a
system that has no ``apt-get``/``dpkg-deb`` at all, where the setup cannot obtain it by design.
"""

from __future__ import annotations

import shutil

import pytest

from rac.evaluation import reference, wordnet
from rac.evaluation.reference import meteor, meteor_exact
from rac.evaluation.wordnet import LEXNAMES_COUNT, install_wordnet, is_installed, lexnames_from_man

#: Rows in the troff table of lexnames(5WN), as the Debian package's manual page writes them.
NAMES = ["adj.all", "adj.pert", "adv.all", "noun.Tops", *[f"noun.n{i}" for i in range(25)],
         *[f"verb.v{i}" for i in range(15)], "adj.ppl"]


def man_page(names: list[str]) -> str:
    rows = "\n".join(f"{i:02d}\t{n}{'  ' if i == 18 else ''}\tsome description " for i, n in enumerate(names))
    return f".TS\ncenter ;\nl l l.\n\\fBFile Number\\fP\t\\fBName\\fP\t\\fBContents\\fP\n_\n{rows}\n.TE\n"


def test_lexnames_is_the_man_pages_table_with_category_numbers():
    assert len(NAMES) == LEXNAMES_COUNT
    lines = lexnames_from_man(man_page(NAMES)).splitlines()
    assert len(lines) == 45
    assert lines[0] == "00\tadj.all\t3" and lines[2] == "02\tadv.all\t4" and lines[3] == "03\tnoun.Tops\t1"
    assert lines[18] == "18\tnoun.n14\t1"  # the trailing blanks of a name are not part of it
    assert lines[29] == "29\tverb.v0\t2" and lines[44] == "44\tadj.ppl\t3"
    with pytest.raises(ValueError, match="expected 00..44"):
        lexnames_from_man(man_page(NAMES[:-1]))


def test_setup_is_soft_where_debian_packages_cannot_be_had(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    result = install_wordnet(tmp_path)
    assert not result.installed and "exact-match only" in result.message and "apt-get" in result.message

    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")

    def fail(cmd, cwd):
        raise RuntimeError("`apt-get download wordnet-base` exited 100: E: Unable to locate package")

    monkeypatch.setattr(wordnet, "_run", fail)
    result = install_wordnet(tmp_path)
    assert not result.installed and "Unable to locate package" in result.message
    assert not is_installed(tmp_path) and not list((tmp_path / "corpora").iterdir())  # no half corpus left


def test_setup_leaves_a_whole_corpus_alone(monkeypatch, tmp_path):
    corpus = tmp_path / "corpora" / "wordnet"
    corpus.mkdir(parents=True)
    for name in (*wordnet.REQUIRED, "lexnames"):
        (corpus / name).write_text("x\n")
    monkeypatch.setattr(wordnet, "_run", lambda cmd, cwd: pytest.fail(f"ran {cmd} with WordNet in place"))
    assert install_wordnet(tmp_path).installed


#: (generated question, gold question): exact, stem and synonym matches, and none.
PAIRS = [("are you looking for a car", "are you looking for an auto"),
         ("do you want cats or dogs", "are you asking about the cat"),
         ("which jaguar do you mean", "which jaguar do you mean"),
         ("is this about the football team", "do you mean the wild animal"),
         ("do you need a doctor near you", "are you searching for a physician")]


def test_meteor_with_wordnet_equals_nltk_meteor_score():
    reference.wordnet_available.cache_clear()
    if not reference.wordnet_available():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            pytest.skip("no apt-get/dpkg-deb: WordNet comes from Debian packages, unobtainable on this system")
        pytest.fail("WordNet is not installed, so METEOR is exact-match only: run `make setup` "
                    "(scripts/setup_wordnet.py) and see what it prints")
    from nltk.translate.meteor_score import meteor_score

    for hyp, ref in PAIRS:
        expected = meteor_score([ref.split()], hyp.split())  # nltk's defaults: Porter stems, WordNet synonyms
        assert meteor(hyp + "?", ref.capitalize() + "?") == pytest.approx(expected), (hyp, ref)
    # WordNet does something: car ~ auto and doctor ~ physician match only as synonyms. (nltk looks up
    # the synonyms of the hypothesis word against the *stemmed* reference word, so car ~ automobile,
    # stemmed "automobil", does not match in nltk either.)
    assert meteor(*PAIRS[0]) > meteor_exact(*PAIRS[0]) and meteor(*PAIRS[4]) > meteor_exact(*PAIRS[4])
    assert meteor(*PAIRS[1]) > meteor_exact(*PAIRS[1])  # cats ~ cat by the stemmer

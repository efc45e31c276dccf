"""``make setup``'s WordNet step: WordNet for METEOR from Debian's packages, no system install.

    python scripts/setup_wordnet.py [--nltk-dir DIR]

Idempotent and soft: it exits 0 whether or not WordNet could be obtained, and prints which
(without it, METEOR is reported as exact-match only). See :mod:`rac.evaluation.wordnet`.
"""

from __future__ import annotations

import argparse

from rac.evaluation.wordnet import default_nltk_dir, install_wordnet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nltk-dir", default=str(default_nltk_dir()),
                        help="NLTK data folder (default: the environment's own, which NLTK searches by itself)")
    result = install_wordnet(parser.parse_args().nltk_dir)
    print(f"wordnet: {result.message}")


if __name__ == "__main__":
    main()

"""WordNet for METEOR, from Debian's packages, without a system install.

NLTK's METEOR matches synonyms through the WordNet corpus, which no Python package ships
and which NLTK's downloader fetches from the internet. On a machine without that access,
Debian's ``wordnet-base`` (the database) and ``wordnet-sense-index`` (``index.sense``,
``cntlist``) hold the same WordNet 3.0 files: ``apt-get download`` fetches the two ``.deb``
files (no root, no install) and ``dpkg-deb -x`` unpacks them. NLTK's reader also wants a
``lexnames`` file (lexicographer file number, name, syntactic category) that the packages
lack; its 45 lines are the table of the ``lexnames(5WN)`` manual page they ship.

Everything lands in ``<nltk_dir>/corpora/wordnet``. The default ``nltk_dir`` is
``<sys.prefix>/nltk_data``, the virtual environment's own folder, which NLTK searches
without ``NLTK_DATA`` being set (:data:`nltk.data.path`), so :func:`rac.evaluation.reference.
wordnet_available` finds it with nothing exported. Used by ``make setup``
(``scripts/setup_wordnet.py``); with WordNet absent the report gives METEOR as "not
available offline" and the exact-match METEOR beside it.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: The Debian packages that carry WordNet 3.0's database files.
PACKAGES = ("wordnet-base", "wordnet-sense-index")
#: Where the packages put the database and the manual page of ``lexnames``.
DEB_DICT = Path("usr/share/wordnet")
DEB_LEXNAMES_MAN = Path("usr/share/man/man5/lexnames.5WN.gz")
#: Files NLTK's WordNet reader opens (besides ``lexnames``): if all are here, the corpus is whole.
REQUIRED = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv"))
#: Syntactic category numbers of the ``lexnames`` file, by the prefix of a lexicographer file's name.
CATEGORIES = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
#: WordNet 3.0 has this many lexicographer files.
LEXNAMES_COUNT = 45
_TABLE_ROW = re.compile(r"^(\d\d)\t([a-z]+)\.(\S+)\s*\t")


def default_nltk_dir() -> Path:
    """``<sys.prefix>/nltk_data``: the environment's NLTK data folder, searched by NLTK by default."""
    return Path(sys.prefix) / "nltk_data"


def wordnet_dir(nltk_dir: str | Path) -> Path:
    return Path(nltk_dir) / "corpora" / "wordnet"


def lexnames_from_man(man_page: str) -> str:
    """The ``lexnames`` file from the ``lexnames(5WN)`` manual page's table (troff source).

    Each table row reads ``NN<TAB>pos.name<TAB>description``; the file's line is
    ``NN<TAB>pos.name<TAB>category`` with the category number of the name's prefix.

    Raises
    ------
    ValueError
        When the table does not hold the 45 rows 00..44 in order.
    """
    rows = [m.groups() for m in map(_TABLE_ROW.match, man_page.splitlines()) if m]
    numbers = [int(n) for n, _, _ in rows]
    if numbers != list(range(LEXNAMES_COUNT)) or any(pos not in CATEGORIES for _, pos, _ in rows):
        raise ValueError(f"the lexnames manual page lists files {numbers}, expected 00..{LEXNAMES_COUNT - 1} "
                         f"with noun/verb/adj/adv names")
    return "".join(f"{n}\t{pos}.{name}\t{CATEGORIES[pos]}\n" for n, pos, name in rows)


def is_installed(nltk_dir: str | Path) -> bool:
    """Whether ``nltk_dir`` holds a whole WordNet corpus (every file the reader needs, and ``lexnames``)."""
    target = wordnet_dir(nltk_dir)
    return all((target / f).is_file() and (target / f).stat().st_size > 0 for f in (*REQUIRED, "lexnames"))


@dataclass
class WordNetSetup:
    """What :func:`install_wordnet` did: ``installed`` (the corpus is there now) and why (``message``)."""

    installed: bool
    message: str


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}")


def install_wordnet(nltk_dir: str | Path | None = None) -> WordNetSetup:
    """Put WordNet into ``<nltk_dir>/corpora/wordnet`` from Debian's packages, if it is not there.

    Idempotent: a whole corpus already in place is left as it is. Soft: when the packages
    cannot be fetched (no ``apt-get``, no network, not a Debian-based system) nothing is
    raised; the result says why, and METEOR stays exact-match only. The corpus is written to
    a temporary folder and moved into place whole, so a killed run leaves no half corpus.

    Parameters
    ----------
    nltk_dir
        The NLTK data folder; default :func:`default_nltk_dir`.
    """
    nltk_dir = Path(nltk_dir) if nltk_dir is not None else default_nltk_dir()
    target = wordnet_dir(nltk_dir)
    if is_installed(nltk_dir):
        return WordNetSetup(True, f"WordNet already in {target}")
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        return WordNetSetup(False, f"{' and '.join(missing)} not found (not a Debian-based system): METEOR is "
                                   f"exact-match only")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wordnet-") as tmp:
        work = Path(tmp)
        try:
            _run(["apt-get", "download", *PACKAGES], work)
            for deb in sorted(work.glob("*.deb")):
                _run(["dpkg-deb", "-x", deb.name, "root"], work)
            man = (work / "root" / DEB_LEXNAMES_MAN).read_bytes()
            lexnames = lexnames_from_man(gzip.decompress(man).decode("utf-8"))
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
            return WordNetSetup(False, f"could not obtain WordNet from Debian's {' and '.join(PACKAGES)} ({e}): "
                                       f"METEOR is exact-match only")
        staged = wordnet_dir(work)
        shutil.copytree(work / "root" / DEB_DICT, staged)
        (staged / "lexnames").write_text(lexnames)
        if not is_installed(work):
            return WordNetSetup(False, f"the packages {list(PACKAGES)} lack a file of {list(REQUIRED)}: METEOR is "
                                       f"exact-match only")
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    return WordNetSetup(True, f"WordNet 3.0 from Debian's {' and '.join(PACKAGES)} in {target}")

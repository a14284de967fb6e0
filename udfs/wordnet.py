"""DataComp's text-based filter, the WordNet half: does some caption word name an ImageNet-21k synset?

DataComp (``baselines/apply_filter.py: does_contain_text_entity``) keeps a caption when fastText
says it is English (:mod:`clipsift.udfs.langid`) and::

    for word in text.split():
        synsets = nltk.corpus.wordnet.synsets(word)
        if synsets and synsets[0].offset() in entity_set:   # entity_set: [int(x[1:]) for x in ids]
            return True

This module reproduces that test without nltk or its downloader:

- **Tokens**: Python's ``str.split()`` (any Unicode whitespace; punctuation stays attached, so
  ``"dog,"`` is not ``"dog"``), then ``str.lower()``. DataComp does not lower-case, but nltk's
  ``synsets`` does (``lemma = lemma.lower()``) before any lookup, so ``"Dog"`` is ``"dog"``.
- **First synset**: nltk's order: parts of speech noun, verb, adjective, adverb; within one, the
  base forms morphy finds (the word itself first) and each form's synsets in index-file order
  (sense-frequency order). The first synset is that list's element 0: the first synset of the
  first form found for the first part of speech that has one.
- **Morphy**: nltk 3.8.1's ``_morphy``, the version DataComp pins (``environment.yml``): an
  exception-list hit returns ``[word] + exceptions`` filtered to the index; otherwise the
  detachment rules are applied once, and while nothing is found they are applied again to the new
  forms (``"dogss"`` -> ``"dogs"`` -> ``"dog"``). nltk >= 3.9 stops after one pass;
  ``repeat_rules=False`` gives that behaviour.
- **Match**: DataComp compares the bare offset, ``synset.offset()`` (an int), with the ints of the
  ``n########`` ids, so a verb, adjective or adverb synset whose byte offset in its own data file
  equals the offset of an ImageNet-21k noun also matches (44 of WordNet's 147,306 lemmas, such as
  ``passionate``, ``cerebral``, ``mossy``, ``entwine``). That is the default (``pos_aware=False``);
  ``pos_aware=True`` compares ``pos + offset`` ids, so only nouns match.

The data: WordNet 3.0 as Debian's ``wordnet-base`` installs it (``/usr/share/wordnet``: the
``index.*``, ``data.*`` and ``*.exc`` files of Princeton's ``dict/``, the layout nltk's
``corpora/wordnet`` also has), and the ImageNet-21k (fall 2011) list of 21,843 synset ids that
timm ships as ``timm/data/_info/imagenet21k_goog_synsets.txt``, byte-identical to DataComp's
``imagenet21k_wordnet_ids.txt`` (same sha256, checked at load). The file is located with
``importlib.util.find_spec("timm")``, which does not import timm (and so not torch).

Each process builds one :class:`SynsetMatcher` per (WordNet folder, id list, options): a
module-level cache keyed by those, filled under a lock. A matcher also remembers the first synset
of every word it has looked up (up to :data:`WORD_CACHE_SIZE` words).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

import numpy as np

from clipsift.udfs.models import file_sha256

#: Where Debian's ``wordnet-base`` puts the WordNet 3.0 database.
WORDNET_DIR = Path("/usr/share/wordnet")
#: sha256 of DataComp's ``imagenet21k_wordnet_ids.txt`` (``baselines/utils.py: download``).
DATACOMP_IN21K_SHA256 = "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2"
#: Words whose first synset a matcher remembers before it starts over.
WORD_CACHE_SIZE = 1 << 20

_TIMM_IN21K = ("data", "_info", "imagenet21k_goog_synsets.txt")
_INSTALL_HINT = "apt-get install wordnet-base, or set baselines.wordnet_dir to a WordNet 3.0 dict/ folder"

#: nltk's part-of-speech order for ``synsets(word)`` and the file suffix of each.
_POS_FILES = (("n", "noun"), ("v", "verb"), ("a", "adj"), ("r", "adv"))
#: nltk's ``WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS`` (WordNet's morphy detachment rules).
_SUBSTITUTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "n": (
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ),
    "v": (
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}


def _require(wordnet_dir: Path, names: Iterable[str]) -> None:
    missing = [name for name in names if not (wordnet_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"no WordNet database at {wordnet_dir} (missing {', '.join(missing)}): {_INSTALL_HINT}")


def _wordnet_files() -> list[str]:
    return [f"{kind}.{suffix}" for _, suffix in _POS_FILES for kind in ("index", "data")] + [
        f"{suffix}.exc" for _, suffix in _POS_FILES
    ]


def imagenet21k_synsets_path() -> Path:
    """Path of timm's ``imagenet21k_goog_synsets.txt`` (found without importing timm).

    Raises:
        FileNotFoundError: when timm is not installed (it comes with ``clipsift[gpu]``) or lacks
            the file; pass ``synset_ids_path=`` a copy of DataComp's ``imagenet21k_wordnet_ids.txt``.
    """
    spec = importlib.util.find_spec("timm")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root).joinpath(*_TIMM_IN21K)
        if path.is_file():
            return path
    raise FileNotFoundError(
        "timm's imagenet21k_goog_synsets.txt was not found: pip install timm (--no-deps is enough: only the list "
        "is read), or set baselines.imagenet21k_synsets to DataComp's imagenet21k_wordnet_ids.txt"
    )


def load_synset_ids(path: str | os.PathLike[str] | None = None) -> frozenset[str]:
    """The synset ids of a list file, one ``n########`` per line.

    Args:
        path: The list; ``None`` for timm's copy of DataComp's ImageNet-21k list, whose sha256 is
            checked against :data:`DATACOMP_IN21K_SHA256`.

    Raises:
        FileNotFoundError: when the file (or timm) is missing.
        ValueError: when a line is not a synset id, or timm's file is not DataComp's list.
    """
    file = imagenet21k_synsets_path() if path is None else Path(path)
    if path is None and (sha := file_sha256(file)) != DATACOMP_IN21K_SHA256:
        raise ValueError(f"{file} (sha256 {sha}) is not DataComp's imagenet21k_wordnet_ids.txt")
    ids = [line.strip() for line in file.read_text(encoding="ascii").splitlines() if line.strip()]
    bad = [i for i in ids if len(i) != 9 or i[0] not in "nvasr" or not i[1:].isdigit()]
    if bad:
        raise ValueError(f"{file}: not synset ids (like n02084071): {bad[:3]}")
    return frozenset(ids)


class SynsetMatcher:
    """First WordNet synsets of words, and DataComp's "some word's first synset is listed" test.

    Args:
        wordnet_dir: A WordNet 3.0 database folder (``index.noun``, ``data.adj``, ``noun.exc``, ...);
            ``None`` for :data:`WORDNET_DIR` (Debian's ``wordnet-base``).
        synset_ids: The listed synsets as ``n02084071``-style ids; ``None`` for the ImageNet-21k
            list (:func:`load_synset_ids`).
        pos_aware: ``False`` (DataComp): a word matches when its first synset's offset equals a
            listed id's offset, whatever its part of speech. ``True``: the part of speech must
            agree too, so only noun synsets match a list of nouns.
        repeat_rules: ``True`` (nltk <= 3.8.1, DataComp's): keep applying morphy's detachment
            rules while no form is found. ``False``: one pass, as nltk >= 3.9.

    Raises:
        FileNotFoundError: when the WordNet files (``apt-get install wordnet-base``) or the id list
            are missing.
    """

    def __init__(
        self,
        wordnet_dir: str | os.PathLike[str] | None = None,
        synset_ids: Collection[str] | None = None,
        *,
        pos_aware: bool = False,
        repeat_rules: bool = True,
    ) -> None:
        self.wordnet_dir = Path(WORDNET_DIR if wordnet_dir is None else wordnet_dir)
        _require(self.wordnet_dir, _wordnet_files())
        ids = load_synset_ids() if synset_ids is None else frozenset(synset_ids)
        self.pos_aware = pos_aware
        self.repeat_rules = repeat_rules
        self._ids = ids
        self._offsets = frozenset(int(i[1:]) for i in ids)
        # Per part of speech: lemma -> its first synset offset (index order = nltk's order).
        self._first: dict[str, dict[str, int]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, suffix in _POS_FILES:
            self._first[pos] = self._read_index(self.wordnet_dir / f"index.{suffix}")
            self._exceptions[pos] = self._read_exceptions(self.wordnet_dir / f"{suffix}.exc")
        self._satellites = self._read_satellites(self.wordnet_dir / "data.adj")
        self._words: dict[str, tuple[str, int] | None] = {}

    @staticmethod
    def _read_index(path: Path) -> dict[str, int]:
        """``lemma -> first synset offset`` of one ``index.pos`` file (license lines skipped)."""
        first: dict[str, int] = {}
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                fields = line.split()
                n_synsets, n_pointers = int(fields[2]), int(fields[3])
                # lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt offset...
                offsets = fields[6 + n_pointers :]
                if len(offsets) != n_synsets:
                    raise ValueError(f"{path}: malformed line for {fields[0]!r}")
                first[fields[0]] = int(offsets[0])
        return first

    @staticmethod
    def _read_exceptions(path: Path) -> dict[str, list[str]]:
        """``inflected form -> base forms`` of one ``pos.exc`` file."""
        table: dict[str, list[str]] = {}
        with path.open(encoding="utf-8") as f:
            for line in f:
                terms = line.split()
                if terms:
                    table[terms[0]] = terms[1:]
        return table

    @staticmethod
    def _read_satellites(path: Path) -> frozenset[int]:
        """Offsets of the adjective satellite synsets (``ss_type`` ``s`` in ``data.adj``)."""
        sats = set()
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.startswith(" "):
                    offset, _lexfile, ss_type = line.split(" ", 3)[:3]
                    if ss_type == "s":
                        sats.add(int(offset))
        return frozenset(sats)

    def _morphy_first(self, form: str, pos: str) -> str | None:
        """The first base form nltk 3.8.1's ``_morphy(form, pos)`` returns, or None."""
        index = self._first[pos]
        exceptions = self._exceptions[pos].get(form)
        if exceptions is not None:
            return next((f for f in [form, *exceptions] if f in index), None)
        if form in index:
            return form
        rules = _SUBSTITUTIONS[pos]
        forms = [form]
        while forms:
            # Applying the rules to each distinct form once, in first-seen order, gives the same
            # first hit as nltk's lists with repeats, without their exponential growth.
            forms = list(dict.fromkeys(f[: -len(old)] + new for f in forms for old, new in rules if f.endswith(old)))
            hit = next((f for f in forms if f in index), None)
            if hit is not None or not self.repeat_rules:
                return hit
        return None

    def _first_pos_offset(self, word: str) -> tuple[str, int] | None:
        key = word.lower()
        if key in self._words:
            return self._words[key]
        found: tuple[str, int] | None = None
        for pos, _ in _POS_FILES:
            base = self._morphy_first(key, pos)
            if base is not None:
                offset = self._first[pos][base]
                found = ("s" if pos == "a" and offset in self._satellites else pos, offset)
                break
        if len(self._words) >= WORD_CACHE_SIZE:
            self._words.clear()
        self._words[key] = found
        return found

    def first_synset(self, word: str) -> str | None:
        """Id of ``wordnet.synsets(word)[0]``: ``"n02084071"`` for ``"dogs"``, None when it has none.

        The letter is the synset's part of speech as nltk's ``Synset.pos()`` gives it (``n``,
        ``v``, ``a``, ``s`` for an adjective satellite, ``r``), the digits its offset in that
        part of speech's data file.
        """
        found = self._first_pos_offset(word)
        return None if found is None else f"{found[0]}{found[1]:08d}"

    def word_matches(self, word: str) -> bool:
        """Whether ``word``'s first synset is listed (by offset, or by id when ``pos_aware``)."""
        found = self._first_pos_offset(word)
        if found is None:
            return False
        pos, offset = found
        if not self.pos_aware:
            return offset in self._offsets
        # A list may name an adjective satellite with either letter (``s`` as nltk, ``a`` as the index).
        return f"{pos}{offset:08d}" in self._ids or (pos == "s" and f"a{offset:08d}" in self._ids)

    def matches(self, text: str | None) -> bool:
        """DataComp's test: some whitespace token of ``text`` has a listed first synset.

        ``None``, non-strings (pandas' NaN) and blank captions do not match.
        """
        if not isinstance(text, str):
            return False
        return any(self.word_matches(word) for word in text.split())


_CACHE: dict[tuple[str, str | None, bool, bool], SynsetMatcher] = {}
_LOCK = threading.Lock()


def get_matcher(
    wordnet_dir: str | os.PathLike[str] | None = None,
    synset_ids_path: str | os.PathLike[str] | None = None,
    *,
    pos_aware: bool = False,
    repeat_rules: bool = True,
) -> SynsetMatcher:
    """The process's :class:`SynsetMatcher` for these arguments, built on first use.

    Args:
        wordnet_dir: WordNet database folder; ``None`` for :data:`WORDNET_DIR`.
        synset_ids_path: Synset id list; ``None`` for the ImageNet-21k list (:func:`load_synset_ids`).
        pos_aware: See :class:`SynsetMatcher`.
        repeat_rules: See :class:`SynsetMatcher`.
    """
    wn_dir = Path(WORDNET_DIR if wordnet_dir is None else wordnet_dir).resolve()
    ids_key = None if synset_ids_path is None else str(Path(synset_ids_path).resolve())
    key = (str(wn_dir), ids_key, pos_aware, repeat_rules)
    matcher = _CACHE.get(key)
    if matcher is not None:
        return matcher
    with _LOCK:
        matcher = _CACHE.get(key)
        if matcher is None:
            matcher = SynsetMatcher(
                wn_dir, load_synset_ids(synset_ids_path), pos_aware=pos_aware, repeat_rules=repeat_rules
            )
            _CACHE[key] = matcher
    return matcher


def caption_in_imagenet21k(
    texts: Sequence[str | None],
    *,
    wordnet_dir: str | os.PathLike[str] | None = None,
    synset_ids_path: str | os.PathLike[str] | None = None,
    pos_aware: bool = False,
    repeat_rules: bool = True,
) -> np.ndarray:
    """DataComp's text-based test on each caption (the English check is :mod:`clipsift.udfs.langid`'s).

    Args:
        texts: Captions; ``None`` (or NaN) for a missing one.
        wordnet_dir: WordNet database folder; ``None`` for :data:`WORDNET_DIR`.
        synset_ids_path: Synset id list; ``None`` for the ImageNet-21k list.
        pos_aware: See :class:`SynsetMatcher`.
        repeat_rules: See :class:`SynsetMatcher`.

    Returns:
        A bool array: True where some whitespace token's first WordNet synset is listed; False for
        missing and blank captions.
    """
    matcher = get_matcher(wordnet_dir, synset_ids_path, pos_aware=pos_aware, repeat_rules=repeat_rules)
    return np.fromiter((matcher.matches(t) for t in texts), dtype=bool, count=len(texts))


def wordnet_identity(
    wordnet_dir: str | os.PathLike[str] | None = None,
    synset_ids_path: str | os.PathLike[str] | None = None,
) -> dict[str, str | int]:
    """Lineage of the text-based filter's data.

    Args:
        wordnet_dir: WordNet database folder; ``None`` for :data:`WORDNET_DIR`.
        synset_ids_path: Synset id list; ``None`` for the ImageNet-21k list.

    Returns:
        ``{"wordnet_dir", "wordnet_data_noun_sha256", "synset_ids_path", "synset_ids_sha256",
        "synset_ids_count"}``.

    Raises:
        FileNotFoundError: when the WordNet files or the id list are missing.
    """
    wn_dir = Path(WORDNET_DIR if wordnet_dir is None else wordnet_dir)
    _require(wn_dir, _wordnet_files())
    ids_file = imagenet21k_synsets_path() if synset_ids_path is None else Path(synset_ids_path)
    return {
        "wordnet_dir": str(wn_dir),
        "wordnet_data_noun_sha256": file_sha256(wn_dir / "data.noun"),
        "synset_ids_path": str(ids_file),
        "synset_ids_sha256": file_sha256(ids_file),
        "synset_ids_count": len(load_synset_ids(synset_ids_path)),
    }

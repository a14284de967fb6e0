"""DataComp's text-based filter (WordNet half): first synsets, caption matches, data lineage.

Reads Debian's ``wordnet-base`` (``make test-data`` installs it) and timm's ImageNet-21k list. The
expected ids are WordNet 3.0 facts (``dog`` is ``n02084071``). Where nltk is installed, the matcher
is checked word for word against nltk's own ``wordnet.synsets`` on the same files.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import string
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipsift.udfs.wordnet import (
    DATACOMP_IN21K_SHA256,
    WORDNET_DIR,
    SynsetMatcher,
    caption_in_imagenet21k,
    get_matcher,
    imagenet21k_synsets_path,
    load_synset_ids,
    wordnet_identity,
)
from tests.support.corpus import tuxpaint_stamps

DOG = "n02084071"


@pytest.fixture(scope="module")
def matcher() -> SynsetMatcher:
    return get_matcher()


def test_imagenet21k_list_is_datacomps() -> None:
    ids = load_synset_ids()
    assert len(ids) == 21843
    assert all(i.startswith("n") for i in ids)
    assert DOG in ids
    assert hashlib.sha256(imagenet21k_synsets_path().read_bytes()).hexdigest() == DATACOMP_IN21K_SHA256


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("dog", DOG),
        ("dogs", DOG),  # detachment rule s -> ""
        ("Dogs", DOG),  # nltk lower-cases
        ("DOG", DOG),
        ("geese", "n01855672"),  # noun.exc: geese -> goose
        ("boxes", "n02883344"),  # xes -> x
        ("running", "n00558883"),  # the noun "running" comes before the verb "run"
        ("is", "v02604760"),  # verb.exc: is -> be; no noun "is"
        ("happier", "a01148283"),  # adj.exc: happier -> happy
        ("mossy", "s01696633"),  # an adjective satellite
        ("quickly", "r00085811"),
        ("render", "n15060326"),  # a plaster: the noun sense comes first
        ("the", None),
        ("of", None),
        ("lorem", None),
        ("dog,", None),  # punctuation stays attached, as in DataComp's text.split()
        ("", None),
    ],
)
def test_first_synsets_are_wordnet_facts(matcher: SynsetMatcher, word: str, expected: str | None) -> None:
    assert matcher.first_synset(word) == expected


@pytest.mark.parametrize(
    ("word", "listed"),
    [("dog", True), ("geese", True), ("render", True), ("quickly", False), ("running", False), ("the", False)],
)
def test_word_matches(matcher: SynsetMatcher, word: str, listed: bool) -> None:
    assert matcher.word_matches(word) is listed


@pytest.mark.parametrize(
    ("caption", "kept"),
    [
        ("a dog on a beach", True),
        # "render" (sense 1: a stucco-like plaster) is an ImageNet-21k synset: the filter is permissive.
        ("abstract vector illustration 3d render", True),
        ("abstract vector illustration", False),
        ("lorem ipsum", False),
        ("A frog", True),
        ("A frog.", False),  # "frog." has no synset
        ("A DOG", True),
        ("two\tdogs\non\u00a0grass", True),  # str.split() splits on any Unicode whitespace
        ("the of and with", False),
    ],
)
def test_captions(matcher: SynsetMatcher, caption: str, kept: bool) -> None:
    assert matcher.matches(caption) is kept


def test_missing_and_blank_captions_do_not_match() -> None:
    out = caption_in_imagenet21k([None, "", "   \n", float("nan"), "a dog"])
    assert out.dtype == np.bool_
    assert out.tolist() == [False, False, False, False, True]
    assert caption_in_imagenet21k([]).shape == (0,)


def test_bare_offsets_match_across_parts_of_speech(matcher: SynsetMatcher) -> None:
    """DataComp compares ``synset.offset()`` ints: an adjective at a listed noun's offset matches."""
    assert matcher.first_synset("passionate") == "a01725713"
    assert "n01725713" in load_synset_ids()
    assert matcher.word_matches("passionate")
    strict = get_matcher(pos_aware=True)
    assert not strict.word_matches("passionate")
    assert strict.word_matches("dog")
    assert matcher.word_matches("mossy") and not strict.word_matches("mossy")  # s01696633 vs n01696633


def test_repeat_rules_follow_nltk_3_8(matcher: SynsetMatcher) -> None:
    assert matcher.first_synset("dogss") == DOG  # dogss -> dogs -> dog (nltk <= 3.8.1)
    assert get_matcher(repeat_rules=False).first_synset("dogss") is None  # nltk >= 3.9: one pass
    # Each pass applies the rules to distinct forms only: nltk's lists would grow as 3**60 here.
    assert matcher.first_synset("es" * 60) is not None


def test_missing_wordnet_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        SynsetMatcher(tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        caption_in_imagenet21k(["a dog"], wordnet_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wordnet_identity(tmp_path)


def test_a_bad_id_list_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "ids.txt"
    bad.write_text("n02084071\ndog\n")
    with pytest.raises(ValueError, match="not synset ids"):
        load_synset_ids(bad)


def test_custom_id_list(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("n01639765\n")  # frog only
    out = caption_in_imagenet21k(["A frog", "a dog", "frogs"], synset_ids_path=ids)
    assert out.tolist() == [True, False, True]


def test_matchers_are_cached_per_key(tmp_path: Path) -> None:
    assert get_matcher() is get_matcher(WORDNET_DIR)
    assert get_matcher() is not get_matcher(pos_aware=True)
    assert get_matcher() is not get_matcher(repeat_rules=False)


def test_identity() -> None:
    ident = wordnet_identity()
    assert ident["wordnet_dir"] == str(WORDNET_DIR)
    assert ident["wordnet_data_noun_sha256"] == hashlib.sha256((WORDNET_DIR / "data.noun").read_bytes()).hexdigest()
    assert ident["synset_ids_sha256"] == DATACOMP_IN21K_SHA256
    assert ident["synset_ids_count"] == 21843


def test_tuxpaint_captions(matcher: SynsetMatcher) -> None:
    """Real English captions. Nearly all end with '.', '!' or '?', which stays on the last word
    (usually the noun): DataComp's rule keeps about a fifth of them (166 of 785 stamps in
    tuxpaint-stamps-default 2022.06.04), and about three fifths once punctuation is stripped. The
    rest name things whose first sense is not an ImageNet-21k leaf ("tiger": a fierce person,
    "chicken": the meat) or letters, numbers and signs."""
    captions = [caption for _, _, caption in tuxpaint_stamps()]
    assert len(captions) > 500
    kept = caption_in_imagenet21k(captions)
    unpunctuated = [" ".join(w.strip(string.punctuation + "“”‘’—–…") for w in c.split()) for c in captions]
    kept_unpunctuated = caption_in_imagenet21k(unpunctuated)
    assert 0.1 < kept.mean() < 0.35
    assert 0.45 < kept_unpunctuated.mean() < 0.75
    assert not (kept & ~kept_unpunctuated).any()


# --- nltk as the oracle ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nltk_wordnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, bool]]:
    """nltk's WordNetCorpusReader over a copy of Debian's files, and whether it is nltk <= 3.8."""
    nltk = pytest.importorskip("nltk")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = tmp_path_factory.mktemp("nltk_data")
    corpus = root / "corpora" / "wordnet"
    corpus.mkdir(parents=True)
    for suffix in ("noun", "verb", "adj", "adv"):
        for name in (f"index.{suffix}", f"data.{suffix}", f"{suffix}.exc"):
            shutil.copyfile(WORDNET_DIR / name, corpus / name)
    # Debian has no lexnames file; synsets() needs only as many names as lexicographer files (45).
    (corpus / "lexnames").write_text("".join(f"{i:02d}\tlex{i:02d}\t0\n" for i in range(45)))
    major_minor = tuple(int(p) for p in nltk.__version__.split(".")[:2])
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        mp.setattr(nltk.data, "path", [str(root), *nltk.data.path])  # nltk >= 3.9.3 reads only there
        if hasattr(WordNetCorpusReader, "map_wn"):
            # nltk >= 3.9 maps OMW data onto WordNet 3.0 via index.sense, which wordnet-base lacks.
            mp.setattr(WordNetCorpusReader, "map_wn", lambda self, version="wordnet": None)
        yield WordNetCorpusReader(str(corpus), None), major_minor < (3, 9)


def _nltk_first(wn: Any, word: str) -> str | None:
    synsets = wn.synsets(word)
    return None if not synsets else f"{synsets[0].pos()}{synsets[0].offset():08d}"


def test_first_synsets_agree_with_nltk(nltk_wordnet: tuple[Any, bool]) -> None:
    wn, old_morphy = nltk_wordnet
    ours = get_matcher(repeat_rules=old_morphy)
    rng = random.Random(0)
    lemmas = sorted(wn._lemma_pos_offset_map)
    words = set()
    for lemma in rng.sample(lemmas, 1000):
        words |= {lemma, lemma.upper(), *(lemma + s for s in ("s", "es", "ed", "ing", "er", "est", "ss", "ies"))}
    words |= {form for pos in "nvar" for form in wn._exception_map[pos]}
    words |= {"dogss", "glasseses", "es" * 8, "dog,", "", "İstanbul", "Straße"}
    disagree = [(w, _nltk_first(wn, w), ours.first_synset(w)) for w in sorted(words)]
    disagree = [row for row in disagree if row[1] != row[2]]
    assert len(words) > 10_000
    assert disagree == []


def test_captions_agree_with_datacomps_code(nltk_wordnet: tuple[Any, bool]) -> None:
    """``does_contain_text_entity`` from DataComp's ``baselines/apply_filter.py``, run with nltk."""
    wn, old_morphy = nltk_wordnet
    entity_set = {int(x[1:]) for x in load_synset_ids()}

    def does_contain_text_entity(text: str) -> bool:
        for word in text.split():
            synsets = wn.synsets(word)
            if len(synsets) == 0:
                continue
            if synsets[0].offset() in entity_set:
                return True
        return False

    captions = [caption for _, _, caption in tuxpaint_stamps()]
    captions += [c.rstrip(".!?") for c in captions] + ["passionate", "A frog.", "dogss on a beach"]
    expected = np.array([does_contain_text_entity(c) for c in captions])
    got = caption_in_imagenet21k(captions, repeat_rules=old_morphy)
    assert got.tolist() == expected.tolist()


def test_caption_resources_from_config_are_used_and_named_in_errors(tmp_path: Path) -> None:
    """``baselines.langid_model`` / ``wordnet_dir`` / ``imagenet21k_synsets`` reach the caption UDF's body: the
    packaged files given explicitly give the packaged answers; a missing folder is an error naming the key."""
    import numpy as np

    from clipsift.udfs.baselines import PACKAGED, CaptionResources, caption_filters
    from clipsift.udfs.langid import bundled_model_path
    from clipsift.udfs.wordnet import WORDNET_DIR, imagenet21k_synsets_path

    text = ["a dog on the grass", "ein Hund", None, "a photo of a tabby cat"]
    size = np.full(len(text), 300.0)
    explicit = CaptionResources(str(bundled_model_path()), str(WORDNET_DIR), str(imagenet21k_synsets_path()))
    assert caption_filters(text, size, size, True, explicit).equals(caption_filters(text, size, size, True, PACKAGED))
    with pytest.raises(FileNotFoundError, match=r"baselines\.wordnet_dir"):
        caption_filters(text, size, size, True, CaptionResources(wordnet_dir=str(tmp_path / "none")))
    with pytest.raises(FileNotFoundError, match=r"baselines\.langid_model"):
        caption_filters(text, size, size, False, CaptionResources(langid_model=str(tmp_path / "none.ftz")))

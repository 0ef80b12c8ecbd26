"""The words and phones of a story (``Dataset.words``, ``.phones``, ``.textgrid``):
the phone and word tiers of its TextGrid found by name or content, noise dropped, checked
against hand-written TextGrids and the synthetic dataset."""

import pytest

import synthetic_speech
import textgrids
from data_utils import Dataset
from run_utils import DatasetError

# ----------------------------------------------------------------------------- words and phones

SHORT_HEADER = 'File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n2.8\n<exists>\n@N@\n'

PHONE_BLOCK = """\
"IntervalTier"
"@NAME@"
0
2.8
8
0
0.3
""
0.3
0.5
"HH"
0.5
0.9
"OW1"
0.9
1.6
"sp"
1.6
2
"W"
2
2.1
"{NS}"
2.1
2.5
" S "
2.5
2.8
"ns"
"""

WORD_BLOCK = """\
"IntervalTier"
"@NAME@"
0
2.8
15
0
0.2
"sentence_start"
0.2
0.3
""
0.3
0.9
" hello "
0.9
1
"sp"
1
1.1
"BR"
1.1
1.2
"lg"
1.2
1.3
"ls"
1.3
1.4
"ns"
1.4
1.5
"{NS}"
1.5
1.6
"{LG}"
1.6
2
"world"
2
2.1
"  "
2.1
2.5
"spin"
2.5
2.6
"{br}"
2.6
2.8
"Sentence_End"
"""

WORDS = [(0.3, 0.9, "hello"), (1.6, 2.0, "world"), (2.1, 2.5, "spin")]
PHONES = [(0.3, 0.5, "HH"), (0.5, 0.9, "OW1"), (1.6, 2.0, "W"), (2.1, 2.5, "S")]


def _dataset_grid(root, story, *blocks, encoding="utf-8"):
    """Write ``<root>/derivative/TextGrids/<story>.TextGrid`` from (block, tier name) pairs."""
    folder = root / "derivative" / "TextGrids"
    folder.mkdir(parents=True, exist_ok=True)
    text = SHORT_HEADER.replace("@N@", str(len(blocks)))
    text += "".join(block.replace("@NAME@", name) for block, name in blocks)
    (folder / f"{story}.TextGrid").write_bytes(text.encode(encoding))
    return folder / f"{story}.TextGrid"


def test_words_and_phones_drop_noise(tmp_path):
    """Noise tokens and empty labels are dropped (any case, braces), labels are stripped."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"))
    assert Dataset(tmp_path).words("tale") == WORDS
    assert Dataset(tmp_path).phones("tale") == PHONES


def test_words_with_bom_and_utf16(tmp_path):
    """The dataset loaders read TextGrids with a UTF-8 BOM or in UTF-16."""
    _dataset_grid(tmp_path, "bom", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"),
                  encoding="utf-8-sig")
    _dataset_grid(tmp_path, "wide", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"),
                  encoding="utf-16")
    for story in ("bom", "wide"):
        assert Dataset(tmp_path).words(story) == WORDS
        assert Dataset(tmp_path).phones(story) == PHONES


@pytest.mark.parametrize("phone_name,word_name", [("phones", "words"), ("phone", "word")])
def test_tiers_found_by_name_in_any_order(tmp_path, phone_name, word_name):
    """Named tiers are found by name even when the word tier comes first."""
    _dataset_grid(tmp_path, "tale", (WORD_BLOCK, word_name), (PHONE_BLOCK, phone_name))
    assert Dataset(tmp_path).words("tale") == WORDS
    assert Dataset(tmp_path).phones("tale") == PHONES


def test_tiers_by_content_without_names(tmp_path):
    """Without recognisable names, content decides: the ARPAbet tier is the phone tier."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "tier A"), (WORD_BLOCK, "tier B"),
                  (PHONE_BLOCK, "tier C"))
    assert Dataset(tmp_path).words("tale") == WORDS
    assert Dataset(tmp_path).phones("tale") == PHONES


@pytest.mark.parametrize("word_name,phone_name", [("", ""), ("tier A", "tier B"),
                                                   ("Word", "tier B"), ("tier A", " PHONES ")])
def test_word_tier_first_without_both_names(tmp_path, word_name, phone_name):
    """Word tier first, with no names, other names or one of the two names: found by content."""
    _dataset_grid(tmp_path, "tale", (WORD_BLOCK, word_name), (PHONE_BLOCK, phone_name))
    assert Dataset(tmp_path).words("tale") == WORDS
    assert Dataset(tmp_path).phones("tale") == PHONES


@pytest.mark.parametrize("word_name,phone_name", [("phone", "word"), ("phones", "tier B"),
                                                  ("tier A", "words")])
def test_names_contradicting_content_look_swapped(tmp_path, word_name, phone_name):
    """A tier named for phones that holds words (or the reverse): the tiers look swapped."""
    path = _dataset_grid(tmp_path, "tale", (WORD_BLOCK, word_name), (PHONE_BLOCK, phone_name))
    dataset = Dataset(tmp_path)
    for load in (dataset.words, dataset.phones):
        with pytest.raises(DatasetError) as excinfo:
            load("tale")
        assert str(excinfo.value).startswith(f"{path}: the tiers look swapped")


def test_textgrid_gives_xmax_and_the_raw_tiers(tmp_path):
    """``Dataset.textgrid``: (xmax, phone tier, word tier) as stored, noise and all; ``words``
    and ``phones`` are these without noise."""
    path = _dataset_grid(tmp_path, "tale", (WORD_BLOCK, "tier A"), (PHONE_BLOCK, "tier B"))
    xmax, phones, words = Dataset(tmp_path).textgrid("tale")
    grid = textgrids.load_textgrid(path)
    assert xmax == 2.8 and phones == grid["tier B"] and words == grid["tier A"]
    assert [entry for entry in words if not textgrids.is_noise(entry[2])] != WORDS  # unstripped
    assert [(s, e, label.strip()) for s, e, label in words
            if not textgrids.is_noise(label)] == WORDS


def test_derivatives_folder_is_accepted(tmp_path):
    """``derivatives/`` works in place of ``derivative/``."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"))
    (tmp_path / "derivative").rename(tmp_path / "derivatives")
    assert Dataset(tmp_path).words("tale") == WORDS


def test_single_tier_is_an_error(tmp_path):
    """A TextGrid with one unnamed tier cannot give words and phones."""
    path = _dataset_grid(tmp_path, "tale", (WORD_BLOCK, "ortho"))
    dataset = Dataset(tmp_path)
    for load in (dataset.words, dataset.phones):
        with pytest.raises(DatasetError) as excinfo:
            load("tale")
        assert str(path) in str(excinfo.value)


def test_missing_story_textgrid(tmp_path):
    """A story without a TextGrid raises DatasetError naming the expected file."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"))
    with pytest.raises(DatasetError, match="nosuchstory.TextGrid"):
        Dataset(tmp_path).words("nosuchstory")


# ----------------------------------------------------------------------------- synthetic dataset

NOISE = {"", "sp", "br", "lg", "ls", "ns", "sentence_start", "sentence_end"}


def _story_grid(data_dir, story):
    return textgrids.load_textgrid(data_dir / "derivative" / "TextGrids" / f"{story}.TextGrid")


def test_synthetic_words(synthetic_dir):
    """For every story, load_words is the word tier without noise, in time order, in the story."""
    truth = Dataset(synthetic_dir).truth()
    for story, info in truth["stories"].items():
        expected = [(s, e, label.strip()) for s, e, label in _story_grid(synthetic_dir, story)["word"]
                    if label.strip().lower().strip("{}") not in NOISE]
        words = Dataset(synthetic_dir).words(story)
        assert words == expected, story
        assert len(words) == info["n_words"], story
        starts = [s for s, _, _ in words]
        assert starts == sorted(starts)
        assert all(0.0 <= s < e <= info["duration_s"] for s, e, _ in words)
        assert all(words[i][1] <= words[i + 1][0] for i in range(len(words) - 1))


def test_synthetic_phones_in_story(synthetic_dir):
    """Phones carry ARPAbet labels with stress digits on vowels and lie inside the story."""
    truth = Dataset(synthetic_dir).truth()
    phones_known = set(truth["phones"])
    for story, info in truth["stories"].items():
        phones = Dataset(synthetic_dir).phones(story)
        assert phones, story
        assert {label.rstrip("012") for _, _, label in phones} <= phones_known
        assert all(0.0 <= s < e <= info["duration_s"] for s, e, _ in phones)


def test_synthetic_other_formats_match_generator(synthetic_dir):
    """Stories in short/chronological format or with a BOM parse to the tiers that were written."""
    truth = Dataset(synthetic_dir).truth()
    stories = truth["stories"]
    formats = {info["textgrid_format"] for info in stories.values()}
    assert {"short", "chronological"} <= formats
    assert any(info["bom"] for info in stories.values())
    lexicon = {"words": truth["words"], "phones": truth["phones"]}
    checked = 0
    for story, info in stories.items():
        if info["textgrid_format"] == "long" and not info["bom"]:
            continue
        _, phone_tier, word_tier, _ = synthetic_speech.make_story(
            truth["seed"], story, lexicon, info["duration_s"], info["sampling_rate"])
        assert _story_grid(synthetic_dir, story) == {"phone": phone_tier, "word": word_tier}, story
        checked += 1
    assert checked >= 3

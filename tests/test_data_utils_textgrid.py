"""Tests of the Praat TextGrid reader of data_utils (parse_textgrid, load_textgrid, load_words,
load_phones) against TextGrid texts written by hand in the formats Praat writes."""

import codecs
import struct

import pytest

import data_utils
import synthetic_data

# ----------------------------------------------------------------------------- one grid, four formats

# Three tiers: phones, words (with an escaped quote, "!", "[1]" and a non-ASCII label inside the
# labels) and a point tier. The same grid is written below in each text format of Praat.
EXPECTED = {
    "phone": [(0.0, 0.5, ""), (0.5, 1.25, "S"), (1.25, 2.3, "EY1")],
    "word": [(0.0, 0.5, ""), (0.5, 1.1, 'say "hi"'), (1.1, 1.6, "wow!"),
             (1.6, 2.05, "item [1]:"), (2.05, 2.3, "café")],
    "bell": [(0.9, 0.9, "ding"), (1.7, 1.7, "dong")],
}

LONG = '''\
File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0 
xmax = 2.3 
tiers? <exists> 
size = 3 
item []: 
    item [1]:
        class = "IntervalTier" 
        name = "phone" 
        xmin = 0 
        xmax = 2.3 
        intervals: size = 3 
        intervals [1]:
            xmin = 0 
            xmax = 0.5 
            text = "" 
        intervals [2]:
            xmin = 0.5 
            xmax = 1.25 
            text = "S" 
        intervals [3]:
            xmin = 1.25 
            xmax = 2.3 
            text = "EY1" 
    item [2]:
        class = "IntervalTier" 
        name = "word" 
        xmin = 0 
        xmax = 2.3 
        intervals: size = 5 
        intervals [1]:
            xmin = 0 
            xmax = 0.5 
            text = "" 
        intervals [2]:
            xmin = 0.5 
            xmax = 1.1 
            text = "say ""hi""" 
        intervals [3]:
            xmin = 1.1 
            xmax = 1.6 
            text = "wow!" 
        intervals [4]:
            xmin = 1.6 
            xmax = 2.05 
            text = "item [1]:" 
        intervals [5]:
            xmin = 2.05 
            xmax = 2.3 
            text = "café" 
    item [3]:
        class = "TextTier" 
        name = "bell" 
        xmin = 0 
        xmax = 2.3 
        points: size = 2 
        points [1]:
            number = 0.9 
            mark = "ding" 
        points [2]:
            number = 1.7 
            mark = "dong" 
'''

SHORT = '''\
File type = "ooTextFile"
Object class = "TextGrid"

0
2.3
<exists>
3
"IntervalTier"
"phone"
0
2.3
3
0
0.5
""
0.5
1.25
"S"
1.25
2.3
"EY1"
"IntervalTier"
"word"
0
2.3
5
0
0.5
""
0.5
1.1
"say ""hi"""
1.1
1.6
"wow!"
1.6
2.05
"item [1]:"
2.05
2.3
"café"
"TextTier"
"bell"
0
2.3
2
0.9
"ding"
1.7
"dong"
'''

# The short format of older Praat versions: "ooTextFile short" and a bare class name.
OLD_SHORT = SHORT.replace('File type = "ooTextFile"\nObject class = "TextGrid"\n',
                          'File type = "ooTextFile short"\n"TextGrid"\n')

CHRONOLOGICAL = '''\
"Praat chronological TextGrid text file"
0 2.3   ! Time domain.
3   ! Number of tiers.
"IntervalTier" "phone" 0 2.3
"IntervalTier" "word" 0 2.3
"TextTier" "bell" 0 2.3

! phone:
1 0 0.5
""

! word:
2 0 0.5
""

! phone:
1 0.5 1.25
"S"

! word:
2 0.5 1.1
"say ""hi"""

! bell:
3 0.9
"ding"

! word:
2 1.1 1.6
"wow!"

! phone:
1 1.25 2.3
"EY1"

! word:
2 1.6 2.05
"item [1]:"

! bell:
3 1.7
"dong"

! word:
2 2.05 2.3
"café"
'''

FORMATS = {"long": LONG, "short": SHORT, "old_short": OLD_SHORT, "chronological": CHRONOLOGICAL}


def _write(tmp_path, data, name="grid.TextGrid"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _raises_with_path(path):
    """Assert that load_textgrid(path) raises DatasetError naming the file; return the error."""
    with pytest.raises(data_utils.DatasetError) as excinfo:
        data_utils.load_textgrid(path)
    assert str(path) in str(excinfo.value)
    return excinfo.value


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_parse_each_format(fmt):
    """Every text format gives the same tiers, entries in file order, floats and str."""
    grid = data_utils.parse_textgrid(FORMATS[fmt])
    assert grid == EXPECTED
    assert list(grid) == ["phone", "word", "bell"]
    for entries in grid.values():
        for start, end, label in entries:
            assert type(start) is float and type(end) is float and type(label) is str


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_crlf_line_endings(fmt):
    """Windows line endings parse like Unix ones."""
    assert data_utils.parse_textgrid(FORMATS[fmt].replace("\n", "\r\n")) == EXPECTED


def test_point_tier_gives_time_twice():
    """A TextTier point (time, mark) becomes (time, time, mark); the older key 'time' works too."""
    grid = data_utils.parse_textgrid(LONG.replace("number = ", "time = "))
    assert grid["bell"] == [(0.9, 0.9, "ding"), (1.7, 1.7, "dong")]


# ----------------------------------------------------------------------------- encodings

@pytest.mark.parametrize("fmt", ["long", "short", "chronological"])
@pytest.mark.parametrize("encode", [
    pytest.param(lambda t: t.encode("utf-8"), id="utf8"),
    pytest.param(lambda t: codecs.BOM_UTF8 + t.encode("utf-8"), id="utf8-bom"),
    pytest.param(lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"), id="utf16le-bom"),
    pytest.param(lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"), id="utf16be-bom"),
    pytest.param(lambda t: t.encode("latin-1"), id="latin1"),
])
def test_load_encodings(tmp_path, fmt, encode):
    """UTF-8 with/without BOM, UTF-16 with BOM and Latin-1 files all give the same tiers."""
    path = _write(tmp_path, encode(FORMATS[fmt]))
    assert data_utils.load_textgrid(path) == EXPECTED


NON_ASCII = '''\
File type = "ooTextFile"
Object class = "TextGrid"

0
1
<exists>
1
"IntervalTier"
"wörter"
0
1
3
0
0.25
"日本語"
0.25
0.5
"naïve"
0.5
1
"😀 ""ok"""
'''


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_non_ascii_labels(tmp_path, encoding):
    """Non-Latin labels and tier names (including a character outside the BMP) survive decoding."""
    path = _write(tmp_path, NON_ASCII.encode(encoding))
    assert data_utils.load_textgrid(path) == {
        "wörter": [(0.0, 0.25, "日本語"), (0.25, 0.5, "naïve"), (0.5, 1.0, '😀 "ok"')]}


def test_decode_praat_text_strips_bom():
    """_decode_praat_text removes the byte-order mark it decodes."""
    for raw in (codecs.BOM_UTF8 + "é".encode("utf-8"), "é".encode("utf-16"),
                codecs.BOM_UTF16_BE + "é".encode("utf-16-be")):
        assert data_utils._decode_praat_text(raw, "x") == "é"
    assert data_utils._decode_praat_text("é".encode("latin-1"), "x") == "é"


def test_damaged_utf16(tmp_path):
    """A UTF-16 file with an odd number of bytes raises DatasetError naming the file."""
    path = _write(tmp_path, LONG.encode("utf-16")[:-1])
    _raises_with_path(path)


def test_utf16_without_bom_is_an_error_not_garbage(tmp_path):
    """UTF-16 without a byte-order mark is refused with an error naming the file."""
    path = _write(tmp_path, LONG.encode("utf-16-le"))
    _raises_with_path(path)


# ----------------------------------------------------------------------------- special grids

def test_duplicate_tier_names_get_suffix():
    """Repeated tier names become name, name#2, name#3 in file order."""
    text = """\
File type = "ooTextFile"
Object class = "TextGrid"

0
1
<exists>
3
"IntervalTier"
"word"
0
1
1
0
1
"a"
"IntervalTier"
"word"
0
1
1
0
1
"b"
"IntervalTier"
"word"
0
1
1
0
1
"c"
"""
    grid = data_utils.parse_textgrid(text)
    assert list(grid) == ["word", "word#2", "word#3"]
    assert [grid[name][0][2] for name in grid] == ["a", "b", "c"]


@pytest.mark.parametrize("text", [
    'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0 \nxmax = 2.3 \n'
    'tiers? <absent> \n',
    'File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n2.3\n<absent>\n',
], ids=["long", "short"])
def test_absent_tiers(text):
    """'tiers? <absent>' is a grid without tiers."""
    assert data_utils.parse_textgrid(text) == {}


def test_point_tier_without_points():
    """A TextTier with no points gives an empty list in every format."""
    long = ('File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0 \nxmax = 1 \n'
            'tiers? <exists> \nsize = 1 \nitem []: \n    item [1]:\n        class = "TextTier" \n'
            '        name = "bell" \n        xmin = 0 \n        xmax = 1 \n        points: size = 0 \n')
    short = ('File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n1\n<exists>\n1\n'
             '"TextTier"\n"bell"\n0\n1\n0\n')
    chrono = ('"Praat chronological TextGrid text file"\n0 1   ! Time domain.\n'
              '1   ! Number of tiers.\n"TextTier" "bell" 0 1\n')
    for text in (long, short, chrono):
        assert data_utils.parse_textgrid(text) == {"bell": []}


# ----------------------------------------------------------------------------- damaged files

def _cut_after(text, marker):
    return text[:text.index(marker) + len(marker)]


@pytest.mark.parametrize("fmt,marker", [
    ("long", 'text = "say ""h'),          # inside a string
    ("long", "intervals [2]:\n"),          # before an interval's values
    ("long", "points: size = 2 \n"),       # before the points
    ("short", '"word"\n0\n2.3\n'),         # before the interval count
    ("short", "2.05\n2.3\n"),              # before the last label
    ("chronological", "2 1.6 2.05\n"),     # entry without its label
    ("chronological", "3   ! Number of tiers.\n"),  # tier headers missing
    ("chronological", '3 1.7\n"dong"\n'),  # at a line end: the word tier stops early
    ("chronological", '"IntervalTier" "word" 0 2.3\n"TextTier" "bell" 0 2.3\n'),  # no entries
])
def test_truncated_file(tmp_path, fmt, marker):
    """A file cut mid-way raises DatasetError naming the file."""
    path = _write(tmp_path, _cut_after(FORMATS[fmt], marker).encode("utf-8"))
    _raises_with_path(path)


@pytest.mark.parametrize("fmt", ["long", "short"])
def test_truncated_at_half(tmp_path, fmt):
    """Cutting a counted format at any point in its second half is detected."""
    text = FORMATS[fmt]
    for cut in range(len(text) // 2, len(text) - 8, 37):
        path = _write(tmp_path, text[:cut].encode("utf-8"))
        _raises_with_path(path)


@pytest.mark.parametrize("fmt,old,new", [
    ("long", 'text = "café" ', 'text = "café '),     # last string never closed
    ("long", '"wow!"', '"wow!'),                      # a string in the middle
    ("chronological", '"café"', '"café'),
])
def test_unterminated_string(tmp_path, fmt, old, new):
    """An unterminated string raises DatasetError naming the file."""
    assert old in FORMATS[fmt]
    path = _write(tmp_path, FORMATS[fmt].replace(old, new).encode("utf-8"))
    _raises_with_path(path)


def test_unterminated_string_message(tmp_path):
    """The error for an unclosed last string says what is wrong."""
    path = _write(tmp_path, LONG.replace('text = "café" ', 'text = "café ').encode("utf-8"))
    assert "unterminated" in str(_raises_with_path(path))


def test_binary_textgrid(tmp_path):
    """A TextGrid saved in Praat's binary format is refused with an error naming the file."""
    raw = (b"ooBinaryFile\x08TextGrid" + struct.pack(">dd", 0.0, 2.3) + b"\x01"
           + struct.pack(">i", 1) + b"\x0cIntervalTier" + struct.pack(">h", 4) + b"word"
           + struct.pack(">ddi", 0.0, 2.3, 1) + struct.pack(">dd", 0.0, 2.3)
           + struct.pack(">h", 2) + b"hi")
    path = _write(tmp_path, raw)
    _raises_with_path(path)


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", codecs.BOM_UTF8], ids=["empty", "blank", "bom"])
def test_empty_file(tmp_path, data):
    """An empty (or blank) file raises DatasetError naming the file."""
    _raises_with_path(_write(tmp_path, data))


def test_not_a_textgrid(tmp_path):
    """A Praat text file of another class is refused."""
    text = 'File type = "ooTextFile"\nObject class = "Sound 2"\n\n0\n1\n'
    _raises_with_path(_write(tmp_path, text.encode()))


@pytest.mark.parametrize("index", [3, 0])
def test_chronological_tier_out_of_range(tmp_path, index):
    """An entry for a tier the chronological header does not declare is an error."""
    text = CHRONOLOGICAL.replace('"TextTier" "bell" 0 2.3\n', "").replace(
        "3   ! Number of tiers.", "2   ! Number of tiers.")
    text = text.replace("3 0.9\n", f"{index} 0.9 1.0\n").replace("3 1.7\n", "2 1.7 1.8\n")
    path = _write(tmp_path, text.encode("utf-8"))
    assert f"tier {index}" in str(_raises_with_path(path))


def test_missing_file(tmp_path):
    """A file that does not exist raises DatasetError naming it."""
    _raises_with_path(tmp_path / "absent.TextGrid")


# ----------------------------------------------------------------------------- load_words / load_phones

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


def test_load_words_and_phones_drop_noise(tmp_path):
    """Noise tokens and empty labels are dropped (any case, braces), labels are stripped."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"))
    assert data_utils.load_words(tmp_path, "tale") == WORDS
    assert data_utils.load_phones(tmp_path, "tale") == PHONES


def test_load_words_with_bom_and_utf16(tmp_path):
    """The dataset loaders read TextGrids with a UTF-8 BOM or in UTF-16."""
    _dataset_grid(tmp_path, "bom", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"),
                  encoding="utf-8-sig")
    _dataset_grid(tmp_path, "wide", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"),
                  encoding="utf-16")
    for story in ("bom", "wide"):
        assert data_utils.load_words(tmp_path, story) == WORDS
        assert data_utils.load_phones(tmp_path, story) == PHONES


@pytest.mark.parametrize("phone_name,word_name", [("phones", "words"), ("phone", "word")])
def test_tiers_found_by_name_in_any_order(tmp_path, phone_name, word_name):
    """Named tiers are found by name even when the word tier comes first."""
    _dataset_grid(tmp_path, "tale", (WORD_BLOCK, word_name), (PHONE_BLOCK, phone_name))
    assert data_utils.load_words(tmp_path, "tale") == WORDS
    assert data_utils.load_phones(tmp_path, "tale") == PHONES


def test_tiers_by_content_without_names(tmp_path):
    """Without recognisable names, content decides: the ARPAbet tier is the phone tier."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "tier A"), (WORD_BLOCK, "tier B"),
                  (PHONE_BLOCK, "tier C"))
    assert data_utils.load_words(tmp_path, "tale") == WORDS
    assert data_utils.load_phones(tmp_path, "tale") == PHONES


@pytest.mark.parametrize("word_name,phone_name", [("", ""), ("tier A", "tier B"),
                                                   ("Word", "tier B"), ("tier A", " PHONES ")])
def test_word_tier_first_without_both_names(tmp_path, word_name, phone_name):
    """Word tier first, with no names, other names or one of the two names: found by content."""
    _dataset_grid(tmp_path, "tale", (WORD_BLOCK, word_name), (PHONE_BLOCK, phone_name))
    assert data_utils.load_words(tmp_path, "tale") == WORDS
    assert data_utils.load_phones(tmp_path, "tale") == PHONES


@pytest.mark.parametrize("word_name,phone_name", [("phone", "word"), ("phones", "tier B"),
                                                  ("tier A", "words")])
def test_names_contradicting_content_look_swapped(tmp_path, word_name, phone_name):
    """A tier named for phones that holds words (or the reverse): the tiers look swapped."""
    path = _dataset_grid(tmp_path, "tale", (WORD_BLOCK, word_name), (PHONE_BLOCK, phone_name))
    for load in (data_utils.load_words, data_utils.load_phones):
        with pytest.raises(data_utils.DatasetError) as excinfo:
            load(tmp_path, "tale")
        assert str(excinfo.value).startswith(f"{path}: the tiers look swapped")


def test_identify_tiers_falls_back_on_interval_count():
    """Neither tier is ARPAbet (IPA phones): the tier with more intervals holds phones."""
    ipa = [(0.0, 0.2, "h"), (0.2, 0.5, "əʊ"), (0.5, 0.7, "w"), (0.7, 1.0, "ɜː")]
    words = [(0.0, 0.5, "hello"), (0.5, 1.0, "world")]
    assert data_utils.identify_tiers({"": words, "#2": ipa}, "x.TextGrid") == (ipa, words)
    assert data_utils.identify_tiers({"": ipa, "#2": words}, "x.TextGrid") == (ipa, words)


def test_identify_tiers_skips_a_point_tier():
    phones = [(0.0, 0.5, "HH"), (0.5, 1.0, "AH0"), (1.0, 1.2, "sp"), (1.2, 1.5, "IY1")]
    words = [(0.0, 1.0, "ha"), (1.0, 1.2, ""), (1.2, 1.5, "e")]
    bell = [(0.9, 0.9, "ding")]
    assert data_utils.identify_tiers({"bell": bell, "a": words, "b": phones}, "x") == (phones,
                                                                                        words)


def test_arpabet_phones_agree_with_low_level_features():
    import low_level_features
    assert data_utils.ARPABET_PHONES == low_level_features.ARPABET_PHONES


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_read_textgrid_gives_xmax(tmp_path, fmt):
    xmax, tiers = data_utils.read_textgrid(_write(tmp_path, FORMATS[fmt].encode()))
    assert xmax == 2.3 and tiers == EXPECTED


def test_derivatives_folder_is_accepted(tmp_path):
    """``derivatives/`` works in place of ``derivative/``."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"))
    (tmp_path / "derivative").rename(tmp_path / "derivatives")
    assert data_utils.load_words(tmp_path, "tale") == WORDS


def test_single_tier_is_an_error(tmp_path):
    """A TextGrid with one unnamed tier cannot give words and phones."""
    path = _dataset_grid(tmp_path, "tale", (WORD_BLOCK, "ortho"))
    for load in (data_utils.load_words, data_utils.load_phones):
        with pytest.raises(data_utils.DatasetError) as excinfo:
            load(tmp_path, "tale")
        assert str(path) in str(excinfo.value)


def test_missing_story_textgrid(tmp_path):
    """A story without a TextGrid raises DatasetError naming the expected file."""
    _dataset_grid(tmp_path, "tale", (PHONE_BLOCK, "phone"), (WORD_BLOCK, "word"))
    with pytest.raises(data_utils.DatasetError, match="nosuchstory.TextGrid"):
        data_utils.load_words(tmp_path, "nosuchstory")


# ----------------------------------------------------------------------------- synthetic dataset

NOISE = {"", "sp", "br", "lg", "ls", "ns", "sentence_start", "sentence_end"}


def _story_grid(data_dir, story):
    return data_utils.load_textgrid(data_dir / "derivative" / "TextGrids" / f"{story}.TextGrid")


def test_synthetic_words(synthetic_dir):
    """For every story, load_words is the word tier without noise, in time order, in the story."""
    truth = data_utils.load_truth(synthetic_dir)
    for story, info in truth["stories"].items():
        expected = [(s, e, label.strip()) for s, e, label in _story_grid(synthetic_dir, story)["word"]
                    if label.strip().lower().strip("{}") not in NOISE]
        words = data_utils.load_words(synthetic_dir, story)
        assert words == expected, story
        assert len(words) == info["n_words"], story
        starts = [s for s, _, _ in words]
        assert starts == sorted(starts)
        assert all(0.0 <= s < e <= info["duration_s"] for s, e, _ in words)
        assert all(words[i][1] <= words[i + 1][0] for i in range(len(words) - 1))


def test_synthetic_phones_in_story(synthetic_dir):
    """Phones carry ARPAbet labels with stress digits on vowels and lie inside the story."""
    truth = data_utils.load_truth(synthetic_dir)
    phones_known = set(truth["phones"])
    for story, info in truth["stories"].items():
        phones = data_utils.load_phones(synthetic_dir, story)
        assert phones, story
        assert {label.rstrip("012") for _, _, label in phones} <= phones_known
        assert all(0.0 <= s < e <= info["duration_s"] for s, e, _ in phones)


def test_synthetic_other_formats_match_generator(synthetic_dir):
    """Stories in short/chronological format or with a BOM parse to the tiers that were written."""
    truth = data_utils.load_truth(synthetic_dir)
    stories = truth["stories"]
    formats = {info["textgrid_format"] for info in stories.values()}
    assert {"short", "chronological"} <= formats
    assert any(info["bom"] for info in stories.values())
    lexicon = {"words": truth["words"], "phones": truth["phones"]}
    checked = 0
    for story, info in stories.items():
        if info["textgrid_format"] == "long" and not info["bom"]:
            continue
        _, phone_tier, word_tier, _ = synthetic_data.make_story(
            truth["seed"], story, lexicon, info["duration_s"], info["sampling_rate"])
        assert _story_grid(synthetic_dir, story) == {"phone": phone_tier, "word": word_tier}, story
        checked += 1
    assert checked >= 3

"""Tests of the Praat TextGrid reader (textgrids.py: parse_textgrid, read_textgrid,
load_textgrid, identify_tiers, is_noise) against TextGrid texts written by hand in the formats
Praat writes."""

import codecs
import struct

import pytest

import textgrids
from run_utils import DatasetError

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
    with pytest.raises(DatasetError) as excinfo:
        textgrids.load_textgrid(path)
    assert str(path) in str(excinfo.value)
    return excinfo.value


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_parse_each_format(fmt):
    """Every text format gives the same tiers, entries in file order, floats and str."""
    grid = textgrids.parse_textgrid(FORMATS[fmt])
    assert grid == EXPECTED
    assert list(grid) == ["phone", "word", "bell"]
    for entries in grid.values():
        for start, end, label in entries:
            assert type(start) is float and type(end) is float and type(label) is str


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_crlf_line_endings(fmt):
    """Windows line endings parse like Unix ones."""
    assert textgrids.parse_textgrid(FORMATS[fmt].replace("\n", "\r\n")) == EXPECTED


def test_point_tier_gives_time_twice():
    """A TextTier point (time, mark) becomes (time, time, mark); the older key 'time' works too."""
    grid = textgrids.parse_textgrid(LONG.replace("number = ", "time = "))
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
    assert textgrids.load_textgrid(path) == EXPECTED


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
    assert textgrids.load_textgrid(path) == {
        "wörter": [(0.0, 0.25, "日本語"), (0.25, 0.5, "naïve"), (0.5, 1.0, '😀 "ok"')]}


def test_decode_praat_text_strips_bom():
    """_decode_praat_text removes the byte-order mark it decodes."""
    for raw in (codecs.BOM_UTF8 + "é".encode("utf-8"), "é".encode("utf-16"),
                codecs.BOM_UTF16_BE + "é".encode("utf-16-be")):
        assert textgrids._decode_praat_text(raw, "x") == "é"
    assert textgrids._decode_praat_text("é".encode("latin-1"), "x") == "é"


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
    grid = textgrids.parse_textgrid(text)
    assert list(grid) == ["word", "word#2", "word#3"]
    assert [grid[name][0][2] for name in grid] == ["a", "b", "c"]


@pytest.mark.parametrize("text", [
    'File type = "ooTextFile"\nObject class = "TextGrid"\n\nxmin = 0 \nxmax = 2.3 \n'
    'tiers? <absent> \n',
    'File type = "ooTextFile"\nObject class = "TextGrid"\n\n0\n2.3\n<absent>\n',
], ids=["long", "short"])
def test_absent_tiers(text):
    """'tiers? <absent>' is a grid without tiers."""
    assert textgrids.parse_textgrid(text) == {}


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
        assert textgrids.parse_textgrid(text) == {"bell": []}


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


# ----------------------------------------------------------------------------- tiers

def test_identify_tiers_falls_back_on_interval_count():
    """Neither tier is ARPAbet (IPA phones): the tier with more intervals holds phones."""
    ipa = [(0.0, 0.2, "h"), (0.2, 0.5, "əʊ"), (0.5, 0.7, "w"), (0.7, 1.0, "ɜː")]
    words = [(0.0, 0.5, "hello"), (0.5, 1.0, "world")]
    assert textgrids.identify_tiers({"": words, "#2": ipa}, "x.TextGrid") == (ipa, words)
    assert textgrids.identify_tiers({"": ipa, "#2": words}, "x.TextGrid") == (ipa, words)


def test_identify_tiers_skips_a_point_tier():
    phones = [(0.0, 0.5, "HH"), (0.5, 1.0, "AH0"), (1.0, 1.2, "sp"), (1.2, 1.5, "IY1")]
    words = [(0.0, 1.0, "ha"), (1.0, 1.2, ""), (1.2, 1.5, "e")]
    bell = [(0.9, 0.9, "ding")]
    assert textgrids.identify_tiers({"bell": bell, "a": words, "b": phones}, "x") == (phones,
                                                                                       words)


def test_arpabet_phones_agree_with_low_level_features():
    import low_level_features
    assert textgrids.ARPABET_PHONES == low_level_features.ARPABET_PHONES


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_read_textgrid_gives_xmax(tmp_path, fmt):
    xmax, tiers = textgrids.read_textgrid(_write(tmp_path, FORMATS[fmt].encode()))
    assert xmax == 2.3 and tiers == EXPECTED


@pytest.mark.parametrize("label", ["", "  ", "sp", "SP", "{NS}", "{br}", " lg ", "ls", "cg",
                                   "sil", "sentence_start", "Sentence_End", "{ sp }"])
def test_is_noise(label):
    """Silences, breaths and noise tokens (any case, in braces, padded) are not words."""
    assert textgrids.is_noise(label)


@pytest.mark.parametrize("label", ["spin", "hello", "S", "AH0", "{hello}", "brr"])
def test_words_and_phones_are_not_noise(label):
    assert not textgrids.is_noise(label)


# ----------------------------------------------------------------------------- times that cannot be

def _short_grid(words, xmax=3.0):
    """A short-format TextGrid: a phone tier of one interval and a word tier of ``words``
    ((start, end, label) in the order stored)."""
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", str(xmax),
             "<exists>", "2", '"IntervalTier"', '"phone"', "0", str(xmax), "1", "0", str(xmax),
             '"AH0"', '"IntervalTier"', '"word"', "0", str(xmax), str(len(words))]
    for start, end, label in words:
        lines += [str(start), str(end), f'"{label}"']
    return "\n".join(lines) + "\n"


def test_a_tier_stored_out_of_order_is_read_in_time_order(caplog):
    stored = [(0, 1, "one"), (2, 3, "three"), (1, 2, "two")]
    grid = textgrids.parse_textgrid(_short_grid(stored), "x.TextGrid")
    assert grid["word"] == [(0.0, 1.0, "one"), (1.0, 2.0, "two"), (2.0, 3.0, "three")]
    assert "x.TextGrid: tier 'word' is stored out of time order" in caplog.text


@pytest.mark.parametrize("words, message", [
    ([(0, 1.5, "one"), (1.2, 3, "two")], r"'one' \(0.0-1.5 s\) overlaps 'two' \(1.2-3.0 s\)"),
    ([(-0.5, 1, "one"), (1, 3, "two")], "'one' from -0.5 s to 1.0 s"),
    ([(0, 2, "one"), (2, 1.5, "two")], "'two' from 2.0 s to 1.5 s"),
])
def test_impossible_times_are_one_line_naming_the_file_and_tier(tmp_path, words, message):
    path = _write(tmp_path, _short_grid(words).encode())
    with pytest.raises(DatasetError, match=message) as refused:
        textgrids.read_textgrid(path)
    assert str(path) in str(refused.value) and "tier 'word'" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_intervals_that_touch_within_rounding_are_not_an_overlap():
    grid = textgrids.parse_textgrid(_short_grid([(0, 1.0000004, "one"), (1, 3, "two")]))
    assert [label for _, _, label in grid["word"]] == ["one", "two"]


def test_an_interval_beyond_the_files_end_is_refused():
    with pytest.raises(DatasetError, match="outside the file's 0-3.0 s"):
        textgrids.parse_textgrid(_short_grid([(0, 1, "one"), (1, 3.5, "two")]), "x.TextGrid")

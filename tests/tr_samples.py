"""TR files to test with: a ``.report`` text and the research code's pickled classes
(``ridge_utils``' ``TextGrid``, ``Tier`` and ``TRFile``), made without that code."""

import contextlib
import sys
import types

import numpy as np

REPORT = """\
0.0000 init-trigger
2.0046 trigger
4.0090 trigger
5.3000 sound-start
6.0135 trigger
8.0181 trigger
9.1000 volume-change 0.8
10.0226 trigger
12.0270 trigger
14.0316 trigger
14.9000 sound-stop
"""
REPORT_TRIGGERS = [0.0, 2.0046, 4.0090, 6.0135, 8.0181, 10.0226, 12.0270, 14.0316]


def write_report(folder, text, name="story.report"):
    path = folder / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def huth_modules(monkeypatch):
    """Fake ``ridge_utils.textgrid`` / ``ridge_utils.stimulus_utils`` modules, removed on exit."""
    package = types.ModuleType("ridge_utils")
    textgrid = types.ModuleType("ridge_utils.textgrid")
    stimulus_utils = types.ModuleType("ridge_utils.stimulus_utils")
    namespace = {}
    for module, name in ((textgrid, "TextGrid"), (textgrid, "Tier"), (stimulus_utils, "TRFile")):
        cls = type(name, (), {"__module__": module.__name__})
        setattr(module, name, cls)
        namespace[name] = cls
    package.textgrid, package.stimulus_utils = textgrid, stimulus_utils
    with monkeypatch.context() as patch:
        for module in (package, textgrid, stimulus_utils):
            patch.setitem(sys.modules, module.__name__, module)
        yield types.SimpleNamespace(**namespace)
    assert "ridge_utils.textgrid" not in sys.modules
    assert "ridge_utils.stimulus_utils" not in sys.modules


def research_tier(classes, nameid, classid, transcript):
    tier = classes.Tier()
    tier.nameid, tier.classid = nameid, classid
    tier.xmin, tier.xmax = "0", "2.3"
    tier.simple_transcript = transcript
    return tier


def research_grid(classes, offset=0.0):
    grid = classes.TextGrid()
    grid.xmin, grid.xmax, grid.size = 0.0, 2.3, 3
    grid.tiers = [
        research_tier(classes, "phone", "IntervalTier",
                      [("0.0", "0.5", ""), ("0.5", "1.25", "S"),
                       ("1.25", str(2.3 + offset), "EY1")]),
        research_tier(classes, "word", "IntervalTier",
                      [("0.0", "0.5", "sp"), ("0.5", str(2.3 + offset), "hello")]),
        research_tier(classes, "bell", "TextTier", [("0.9", "ding")]),
    ]
    return grid


RESEARCH_GRID = {"phone": [(0.0, 0.5, ""), (0.5, 1.25, "S"), (1.25, 2.3, "EY1")],
                 "word": [(0.0, 0.5, "sp"), (0.5, 2.3, "hello")],
                 "bell": [(0.9, 0.9, "ding")]}

TRIGGERS = [0.0, 2.0046, 4.009, 6.0135, 8.0181, 10.0226]


def research_trfile(classes, shift=0.0):
    trfile = classes.TRFile()
    trfile.trtimes = [np.float64(t + shift) if k % 2 else t + shift for k, t in enumerate(TRIGGERS)]
    trfile.soundstarttime = np.float64(3.25)
    trfile.soundstoptime = 11.5
    trfile.otherlabels = [(7.0, "volume")]
    trfile.expectedtr = 2.0045
    return trfile

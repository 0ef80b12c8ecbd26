"""arguments.py: flags declared once as settings fields, from which the parser, --config files,
the resume checks and the recorded protocol are derived."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import alignment_outputs
import arguments
import brain_evaluate
import brain_trainer_story
import checkpoints
import eval_asr
import finished_results
import probing
import results_schema
from arguments import flag
from run_utils import UsageError

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(kw_only=True)
class Example(arguments.Flags):
    """An example script's settings."""

    name: str = flag(help="a required name")
    count: int = flag(3, help="how many", protocol=True)
    ratio: float = flag(0.5, help="a ratio", group="numbers", resumable=True)
    paths: list[str] = flag([], help="some paths")
    layers: list[int] | None = flag(None, help="layers")
    loud: bool = flag(False, help="a switch")
    kind: str = flag("a", choices=("a", "b"), help="a choice")
    extra: list[str] = flag([], action="append", help="repeat for several")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "count")


def parse(argv, **kwargs):
    return arguments.parse(Example, argv, description="an example", **kwargs)


def test_flags_take_their_type_and_arity_from_the_annotation():
    settings = parse(["--name", "x", "--count", "4", "--paths", "a", "b", "--layers", "1", "2",
                      "--loud", "--kind", "b", "--extra", "p", "--extra", "q"])
    assert settings == Example(name="x", count=4, paths=["a", "b"], layers=[1, 2], loud=True,
                               kind="b", extra=["p", "q"])
    assert parse(["--name", "x"]) == Example(name="x")  # the defaults, lists fresh per object
    assert parse(["--name", "x"]).paths is not Example(name="y").paths


def test_bad_flags_stop_with_one_line_and_status_2(capsys):
    for argv, message in ((["--count", "3"], "--name"),
                          (["--name", "x", "--count", "0"], "--count must be >= 1, got 0"),
                          (["--name", "x", "--count", "nan"], "invalid int value"),
                          (["--name", "x", "--kind", "c"], "invalid choice")):
        with pytest.raises(SystemExit) as stop:
            parse(argv)
        assert stop.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("usage:") is False and message in error


@pytest.mark.parametrize("value, ok", [(1, True), (7.5, True), (0, False), (-2, False),
                                       (float("nan"), False), (float("inf"), False)])
def test_check_at_least_refuses_small_and_non_finite_values(value, ok):
    settings = dataclasses.replace(Example(name="x"))
    settings.ratio = value
    if ok:
        arguments.check_at_least(settings, 1, "ratio", "layers")
        return
    with pytest.raises(UsageError, match=f"--ratio must be >= 1, got {value}"):
        arguments.check_at_least(settings, 1, "ratio", "layers")


def test_help_shows_groups_and_defaults_only_where_there_is_one():
    text = arguments.build_parser(Example, "an example").format_help()
    assert "how many (default: 3)" in text and "numbers:" in text
    assert "a ratio (default: 0.5)" in text
    for bare in ("some paths\n", "layers\n", "a switch\n", "repeat for several\n"):
        assert bare in text
    assert "--config FILE" in text


@pytest.mark.parametrize("name", ["", ".", "..", "/abs", "a/b", "../x"])
def test_exp_names_that_leave_the_parent_are_refused(name):
    with pytest.raises(UsageError, match="plain folder name"):
        arguments.check_exp_name(name)


def test_exp_name_default_and_plain_names():
    assert arguments.check_exp_name("wav2vec2_UTS01") == "wav2vec2_UTS01"
    assert arguments.default_exp_name("/models/wav2vec2-base/", "UTS01", "fmri") == \
        "wav2vec2-base_UTS01_fmri"


# ----------------------------------------------------------------------------- --config

def test_a_config_file_gives_settings_and_the_command_line_overrides_them(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"name": "from-file", "count": 7, "paths": ["a"],
                                  "loud": True, "extra": ["p", "q"], "layers": None}))
    settings = parse(["--config", str(config), "--count", "9"])
    assert (settings.name, settings.count, settings.paths, settings.loud, settings.layers) == (
        "from-file", 9, ["a"], True, None)
    assert settings.extra == ["p", "q"]


def test_a_config_file_with_sections_gives_each_script_its_own(tmp_path):
    config = tmp_path / "paper.yaml"
    config.write_text("description: both scripts\ntrain:\n  name: trainer\n  count: 2\n"
                      "evaluate:\n  name: evaluator\n")
    assert parse(["--config", str(config)], section="train").count == 2
    assert parse(["--config", str(config)], section="evaluate") == Example(name="evaluator")
    with pytest.raises(SystemExit):  # no section for this script: --name is still needed
        parse(["--config", str(config)], section="probe")


@pytest.mark.parametrize("content, message", [
    ({"nmae": "x"}, "'nmae' is not a setting of this script (did you mean 'name'?)"),
    ({"name": "x", "loud": "yes"}, "'loud' is a switch: give true or false"),
    ({"name": ["x", "y"]}, "'name' takes one value"),
    ({"train": {"name": "x"}, "count": 2}, "holds 'count' besides them"),
    ([1, 2], "expected an object of settings"),
])
def test_bad_config_files_stop_with_one_line_naming_the_file(tmp_path, capsys, content,
                                                             message):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as stop:
        parse(["--config", str(config)], section="train")
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--config {config}" in error and message in error


def test_an_unreadable_config_file_is_named(tmp_path, capsys):
    config = tmp_path / "broken.json"
    config.write_text("{not json")
    for path in (config, tmp_path / "missing.json"):
        with pytest.raises(SystemExit):
            parse(["--config", str(path)])
        assert f"--config {path}" in capsys.readouterr().err


def test_the_paper_configs_parse_for_every_script_that_reads_them():
    from pathlib import Path

    configs = sorted(Path(arguments.__file__).parent.glob("configs/*.json"))
    assert configs
    required = ["--data_dir", "d", "--subject", "1", "--model_name", "m"]
    for config in configs:
        content = json.loads(config.read_text())
        if "train" in content:
            brain_trainer_story.parse_args(["--config", str(config), *required])
        if "evaluate" in content:
            brain_evaluate.parse_args(["--config", str(config), *required])
        if "probe" in content:
            probing.parse_args("phonemes", ["--config", str(config), "--data_path", "t",
                                            "--model_name", "m"])
        if "asr" in content:
            eval_asr.parse_args(["--config", str(config), "--data_path", "t", "--model_name",
                                 "m"])


# ----------------------------------------------------------------------------- commands

@dataclasses.dataclass(kw_only=True)
class Show(arguments.Flags):
    """Show a folder."""

    folder: str = flag(positional=True, help="the folder")
    depth: int = flag(1, help="how deep")


def test_commands_return_the_settings_of_the_command_given(capsys):
    commands = {"example": (Example, "an example"), "show": (Show, "show a folder")}
    assert arguments.parse_command(commands, ["show", "here", "--depth", "2"],
                                   description="tools") == Show(folder="here", depth=2)
    assert isinstance(arguments.parse_command(commands, ["example", "--name", "x"],
                                              description="tools"), Example)
    with pytest.raises(SystemExit) as stop:
        arguments.parse_command(commands, ["example", "--name", "x", "--count", "0"],
                                description="tools")
    assert stop.value.code == 2 and "--count must be >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- records

EVALUATE = ["--model_name", "m", "--subject", "1", "--data_dir", "d"]


def test_a_new_evaluator_flag_is_recorded_and_resume_checked_with_no_other_edit(tmp_path):
    @dataclasses.dataclass(kw_only=True)
    class Extended(brain_evaluate.Settings):
        smoothing: float = flag(0.0, help="a new scoring choice", protocol=True)

    ceiling = tmp_path / "UTS01.npy"
    ceiling.write_bytes(b"")  # only its identity is recorded here
    settings = arguments.parse(Extended, [*EVALUATE, "--nc_path", str(ceiling), "--smoothing",
                                          "0.3"], description="x")
    protocol = alignment_outputs.protocol(settings)
    assert protocol["smoothing"] == 0.3
    written = results_schema.to_json(results_schema.from_json(
        results_schema.Protocol, json.loads(json.dumps(protocol))))  # as results.json has it
    assert written["smoothing"] == 0.3 and written["test_target"] == "repeats_mean"
    assert arguments.as_dict(settings)["smoothing"] == 0.3
    assert arguments.fixed_values(settings)["smoothing"] == 0.3  # --resume may not change it
    saved = json.loads(json.dumps(arguments.fixed_values(settings)))
    changed = dataclasses.replace(settings, smoothing=0.5)
    assert arguments.resume_changes(settings, saved) == []
    assert arguments.resume_changes(changed, saved) == [("smoothing", 0.3, 0.5)]

    class Data:  # the files a run reads: none here
        def input_files(self, subject, stories):
            return []

    keep = finished_results.result_settings(settings, Data(), "UTS01", ["a"], None)
    assert keep["--smoothing"] == 0.3
    folder = tmp_path / ".run.partial"
    finished_results.FinishedResults(folder, keep).save({"layer": 1}, {"r": [0.5]})
    other = finished_results.result_settings(changed, Data(), "UTS01", ["a"], None)
    with pytest.raises(UsageError, match="other settings.*--smoothing"):
        finished_results.FinishedResults.open(folder, other, resume=True, overwrite=False)
    finished_results.FinishedResults.open(folder, keep, resume=True, overwrite=False)


def test_flags_resume_may_change_are_not_part_of_a_result():
    settings = brain_evaluate.parse_args([*EVALUATE, "--batch_size", "4", "--fdr_q", "0.1"])
    fixed = arguments.fixed_values(settings)
    for name in ("batch_size", "fdr_q", "device", "save_dir", "layers", "resume"):
        assert name not in fixed
    for name in ("alphas", "context_s", "chunk_s", "test_target", "data_dir", "nc_thr"):
        assert name in fixed
    assert set(alignment_outputs.protocol(settings)) >= {
        "test_target", "normalise_by", "alpha_score", "tr_source", "tr_path", "n_permutations",
        "n_bootstrap", "block_len", "fdr_q", "train_fraction", "followup_ceiling",
        "confidence"}


def test_the_trainer_refuses_to_resume_with_a_changed_flag(tmp_path):
    argv = ["--model_name", "m", "--subject", "1", "--data_dir", "d"]
    settings = brain_trainer_story.parse_args(argv)
    run_dir = tmp_path / "run"
    (run_dir / "last").mkdir(parents=True)
    (run_dir / checkpoints.STATE_FILE).write_bytes(b"")
    (run_dir / "run_config.json").write_text(json.dumps(
        {"arguments": json.loads(json.dumps(arguments.as_dict(settings)))}))
    checkpoints.check_resumable(run_dir, brain_trainer_story.parse_args([*argv, "--num_workers",
                                                                         "2"]))
    with pytest.raises(UsageError, match="base_lr: 5e-05 -> 0.001"):
        checkpoints.check_resumable(run_dir, brain_trainer_story.parse_args(
            [*argv, "--base_lr", "1e-3"]))


SCRIPTS = ["brain_evaluate.py", "brain_regions.py", "brain_trainer_story.py", "data_utils.py",
           "eval_asr.py", "eval_emotion.py", "eval_intent.py", "eval_phonemes.py",
           "eval_sentence_type.py", "eval_words.py", "make_tiny.py", "noise_ceilings.py",
           "report.py", "reproduce.py", "synthetic_data.py", "synthetic_downstream.py",
           "target_features.py"]
# what --help would wait for: torch, transformers, sklearn and matplotlib take seconds to import
HEAVY = ("torch.", "transformers.", "sklearn.", "matplotlib.", "scipy.stats", "scipy.sparse")

CHECK_IMPORTS = """
import contextlib, io, json, runpy, sys
argv, found = sys.argv[1:], {}
for script in SCRIPTS:
    sys.argv, out, err = [script, *argv], io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit:
            pass
    heavy = sorted(name for name in sys.modules if name.startswith(HEAVY))
    found[script] = {"heavy": heavy[:5], "stdout": out.getvalue(), "stderr": err.getvalue()}
print(json.dumps(found))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--no_such_flag"]], ids=["help", "bad flag"])
def test_help_and_argument_errors_import_no_heavy_library(argv):
    """--help and argument errors appear at once: torch, transformers and the like are loaded
    lazily, on first use, after the flags are parsed (the scripts run one after the other in
    one interpreter, so a heavy import is caught at the first script that makes it)."""
    code = f"SCRIPTS, HEAVY = {SCRIPTS!r}, {HEAVY!r}" + CHECK_IMPORTS
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for script, found in json.loads(result.stdout).items():
        assert not found["heavy"], (script, found)
        if argv == ["--help"]:  # ending with the script's documentation page
            assert "usage:" in found["stdout"], (script, found)
            page = found["stdout"].split("documentation: ")[1].split()[0]
            assert (ROOT / page).is_file(), (script, page)
        else:
            assert ("unrecognized arguments" in found["stderr"] or "invalid choice" in
                    found["stderr"] or "arguments are required" in found["stderr"]), (
                script, found)

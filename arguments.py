"""Script settings declared once: each flag is a field of a settings dataclass that carries its
default, its help, its group in ``--help``, whether it is part of the recorded scoring protocol
and whether ``--resume`` may change it. The parser, the ``--config`` file, the resume check and
the protocol record are all derived from these fields, so a new flag needs no other edit.

    @dataclasses.dataclass(kw_only=True)
    class Settings(data_utils.DatasetFlags):
        nc_thr: float = arguments.flag(0.4, help="...", protocol=True)
        device: str = arguments.flag("auto", help="...", resumable=True)

        def __post_init__(self):  # checks and derived defaults; a UsageError names the flag
            ...

    settings = arguments.parse(Settings, argv, description="...", section="evaluate")

A notebook builds the same settings without a command line: ``Settings(data_dir=..., ...)``.
``--config FILE`` (JSON, or YAML for ``.yaml``/``.yml``) gives settings by flag name, either for
one script or in sections named after the scripts that read them (``SECTIONS``); flags on the
command line override it. (transformers' ``HfArgumentParser`` builds parsers from dataclasses
too, but it imports transformers, seconds before ``--help`` can appear, and passes every field
metadata to argparse, leaving no room for a flag's protocol and resume facts.)
"""

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import types
import typing
from pathlib import Path

from run_utils import UsageError

# --config sections: the scripts that read each one
SECTIONS = {"train": "brain_trainer_story.py", "evaluate": "brain_evaluate.py",
            "probe": "eval_*.py (the linear probes)", "asr": "eval_asr.py",
            "reproduce": "reproduce.py"}
CONFIG_NOTE = "description"  # a top-level key of a config file that holds text for people
CONFIG_HELP = ("settings by flag name from a JSON (or .yaml) file, one script's or in sections "
               f"({', '.join(SECTIONS)}); flags given here override it")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (None, off or empty)."""

    def _get_help_string(self, action):
        if any(action.default is value for value in (None, False, argparse.SUPPRESS)) or (
                isinstance(action.default, (list, tuple)) and not action.default):
            return action.help
        return super()._get_help_string(action)


def flag(default=dataclasses.MISSING, *, help, group=None, protocol=False, resumable=False,
         aliases=(), positional=False, **argparse_options):
    """A settings field and its flag ``--<field name>``.

    ``help``: the help text, where ``{name}`` stands for the ``HELP_VALUES[name]`` of the
    settings class (a flag shared by several scripts can name each one's dataset); ``group``:
    its heading in ``--help`` (None: the general flags);
    ``protocol``: recorded with the results as part of the scoring protocol; ``resumable``:
    ``--resume`` may change it (it changes which results a run makes, its speed or where it
    writes, not the numbers of a result); ``aliases``: more option strings; ``positional``: an
    argument without a flag (``script.py VALUE``), required; other options go
    to ``argparse.add_argument`` (``choices``, ``metavar``, ``type``, ``action``, ...). The
    flag's type and arity come from the field's annotation: ``bool`` is a switch, ``list[T]``
    takes one or more T. No default: the flag is required."""
    metadata = {"help": help, "group": group, "protocol": protocol, "resumable": resumable,
                "aliases": tuple(aliases), "positional": positional, "options": argparse_options}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _element_type(annotation):
    """(is a list, element type) of a field annotation: ``list[int] | None`` -> (True, int)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _element_type(inner[0])
    if origin is list:
        return True, (typing.get_args(annotation) or (str,))[0]
    return False, annotation


def _add_flag(parser, field, help_values):
    """Add ``field``'s flag to ``parser`` (or to its group), its help's ``{name}``s filled from
    ``help_values``."""
    meta = field.metadata
    options = dict(meta["options"])
    text = meta["help"].format_map(help_values) if help_values else meta["help"]
    is_list, kind = _element_type(field.type)
    if kind is bool:
        options.setdefault("action", "store_true")
    else:
        options.setdefault("type", kind)
        if is_list and options.get("action") != "append":
            options.setdefault("nargs", "+")
    if meta["positional"]:
        parser.add_argument(field.name, help=text, **options)
        return
    if field.default is not dataclasses.MISSING:
        options["default"] = field.default
    elif field.default_factory is not dataclasses.MISSING:
        options["default"] = field.default_factory()
    else:
        options["required"] = True
    parser.add_argument(f"--{field.name}", *meta["aliases"], dest=field.name, help=text,
                        **options)


def settings_fields(settings_class):
    """The fields of a settings dataclass that are flags (declared with ``flag``; their
    annotations are types, not strings: no ``from __future__ import annotations``)."""
    return [field for field in dataclasses.fields(settings_class)
            if "protocol" in field.metadata]


def add_flags(parser, settings_class):
    """Add the flags of a settings dataclass to ``parser``, each under its group's heading."""
    groups = {}
    for field in settings_fields(settings_class):
        title = field.metadata["group"]
        if title is not None and title not in groups:
            groups[title] = parser.add_argument_group(title)
        _add_flag(groups.get(title, parser), field, getattr(settings_class, "HELP_VALUES", {}))


def _epilog(docs):
    """The last line of ``--help``: the documentation page of the script."""
    return f"documentation: {docs}" if docs else None


def build_parser(settings_class, description, prog=None, docs=None):
    """The argparse parser of a settings dataclass (and its ``--config`` flag); ``docs``: the
    documentation page ``--help`` ends with."""
    parser = argparse.ArgumentParser(description=description, prog=prog, epilog=_epilog(docs),
                                     formatter_class=HelpFormatter)
    add_flags(parser, settings_class)
    if "config" not in {field.name for field in settings_fields(settings_class)}:
        parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    return parser


def parse(settings_class, argv=None, *, description, section=None, prog=None, shared=(),
          docs=None):
    """Settings from the command line ``argv`` (default ``sys.argv[1:]``) and the ``--config``
    file it names (its ``section``, when the file has sections; ``shared``: the settings
    classes of the other scripts that read that section, whose flags it may hold too). Bad
    flags, config entries or settings (a ``UsageError`` of the dataclass's checks) stop with
    argparse's one-line error and exit status 2."""
    parser = build_parser(settings_class, description, prog, docs)
    argv = list(sys.argv[1:] if argv is None else argv)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config")
    path = config.parse_known_args(argv)[0].config
    tokens = []
    if path is not None:
        try:
            tokens = config_tokens(path, settings_class, section, shared)
        except UsageError as err:
            parser.error(str(err))
    values = vars(parser.parse_args(tokens + argv))  # the command line comes last: it wins
    if "config" not in {field.name for field in settings_fields(settings_class)}:
        values.pop("config")  # a settings class may keep the file's name as a field of its own
    try:
        return settings_class(**values)
    except UsageError as err:
        parser.error(str(err))


def parse_command(commands, argv=None, *, description, prog=None, docs=None):
    """The settings of a script with commands (``script.py COMMAND --flags``): ``commands``
    maps each command to (its settings dataclass, its one-line help), and the class of the
    settings returned tells the command. The dataclass's docstring is its ``--help``
    description. Errors as ``parse``'s."""
    parser = argparse.ArgumentParser(description=description, prog=prog, epilog=_epilog(docs),
                                     formatter_class=HelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, (settings_class, summary) in commands.items():
        add_flags(subparsers.add_parser(
            name, help=summary, description=settings_class.__doc__, epilog=_epilog(docs),
            formatter_class=HelpFormatter), settings_class)
    values = vars(parser.parse_args(argv))
    command = values.pop("command")
    try:
        return commands[command][0](**values)
    except UsageError as err:
        subparsers.choices[command].error(str(err))


def read_config(path, section=None):
    """The settings a config file gives a script that reads ``section``: the whole file when
    it has no sections, else that section ({} when the file has none for it)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # only for YAML files: its import is not free

            content = yaml.safe_load(text)
        else:
            content = json.loads(text)
    except ValueError as err:  # json's and yaml's errors are ValueErrors
        raise UsageError(f"--config {path}: not valid {path.suffix.lstrip('.') or 'JSON'} "
                         f"({str(err).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise UsageError(f"--config {path}: expected an object of settings, found "
                         f"{type(content).__name__}")
    content = {key: value for key, value in content.items() if key != CONFIG_NOTE}
    sections = [key for key in content if key in SECTIONS]
    if not sections:
        return content
    if len(sections) < len(content):
        others = ", ".join(repr(key) for key in content if key not in SECTIONS)
        raise UsageError(f"--config {path}: a file of sections ({', '.join(SECTIONS)}) holds "
                         f"{others} besides them; put each setting in its script's section")
    chosen = content.get(section) or {}
    if not isinstance(chosen, dict):
        raise UsageError(f"--config {path}: section {section!r} must be an object of settings")
    return chosen


def config_tokens(path, settings_class, section=None, shared=()):
    """The command-line tokens of the settings a config file gives (``read_config``), checked
    against the flags of ``settings_class``: a setting that is not one (nor one of the
    ``shared`` classes', which is skipped) is a UsageError naming the file and the closest
    flag."""
    fields = {field.name: field for field in settings_fields(settings_class)}
    others = {field.name for kind in shared for field in settings_fields(kind)}
    tokens = []
    for name, value in read_config(path, section).items():
        if name not in fields and name in others:
            continue
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            raise UsageError(f"--config {path}: {name!r} is not a setting of this script"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + "; its settings are the flags of --help")
        tokens += _tokens(fields[name], value, path)
    return tokens


def _tokens(field, value, path):
    """The command-line tokens that set ``field`` to ``value`` (None: its default)."""
    option = f"--{field.name}"
    is_list, kind = _element_type(field.type)
    if value is None:
        return []
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"--config {path}: {field.name!r} is a switch: give true or false, "
                             f"not {value!r}")
        return [option] if value else []
    if isinstance(value, (dict, bool)) or (isinstance(value, list) and not is_list):
        raise UsageError(f"--config {path}: {field.name!r} takes "
                         f"{'a list of values' if is_list else 'one value'}, not {value!r}")
    values = [str(item) for item in (value if isinstance(value, list) else [value])]
    if not is_list:
        return [f"{option}={values[0]}"]
    if field.metadata["options"].get("action") == "append":
        return [f"{option}={item}" for item in values]
    return [option, *values] if values else []


# ----------------------------------------------------------------------------- what a run records

def as_dict(settings):
    """Every flag's value: field name -> value (for run_config.json)."""
    return {field.name: getattr(settings, field.name)
            for field in settings_fields(type(settings))}


def protocol_values(settings):
    """The values of the flags declared part of the scoring protocol."""
    return {field.name: getattr(settings, field.name)
            for field in settings_fields(type(settings)) if field.metadata["protocol"]}


def fixed_values(settings):
    """The values of the flags ``--resume`` may not change: what a run's results depend on."""
    return {field.name: getattr(settings, field.name)
            for field in settings_fields(type(settings)) if not field.metadata["resumable"]}


def resume_changes(settings, saved):
    """The flags ``--resume`` may not change whose values differ from ``saved`` (a run's
    recorded arguments, as read back from JSON): [(name, saved value, new value)]."""
    current = json.loads(json.dumps(fixed_values(settings), default=str))
    return [(name, saved.get(name), value) for name, value in current.items()
            if saved.get(name) != value]


# ----------------------------------------------------------------------------- checks

def check_at_least(settings, minimum, *names):
    """A UsageError unless each flag of ``names`` (None skipped) is a finite number >=
    ``minimum`` (NaN and infinity are refused too)."""
    for name in names:
        value = getattr(settings, name)
        if value is not None and not minimum <= value < math.inf:
            raise UsageError(f"--{name} must be >= {minimum}, got {value}")


def check_positive(settings, *names):
    """A UsageError unless each flag of ``names`` is a positive finite number."""
    for name in names:
        value = getattr(settings, name)
        if not 0 < value < math.inf:
            raise UsageError(f"--{name} must be a positive number, got {value}")


def check_penalties(settings, *names):
    """A UsageError unless each flag of ``names`` lists ridge penalties that are all positive
    finite numbers (a penalty of 0 or below leaves the ridge unregularised or undefined)."""
    for name in names:
        bad = [value for value in getattr(settings, name) if not 0 < value < math.inf]
        if bad:
            raise UsageError(f"--{name}: ridge penalties must be positive numbers, got "
                             f"{' '.join(map(str, bad))}")


def check_exp_name(name):
    """An output-folder name that stays inside its parent folder, or a UsageError."""
    if not name or name in (".", "..") or os.sep in name or "/" in name or (
            os.altsep and os.altsep in name) or Path(name).is_absolute():
        raise UsageError(f"--exp_name {name!r}: give a plain folder name (not empty, '.', '..', "
                         "an absolute path or a path with a separator)")
    return name


def default_exp_name(model_name, *parts):
    """``<checkpoint folder or hub name>_<part>_<part>...``, the default ``--exp_name``."""
    return "_".join([Path(str(model_name).rstrip("/")).name, *map(str, parts)])


# ----------------------------------------------------------------------------- shared groups

@dataclasses.dataclass(kw_only=True)
class Flags:
    """Base of the settings groups. Each group's ``__post_init__`` checks its own flags (a
    UsageError names the flag and the fix), fills defaults that depend on others, and calls
    ``super().__post_init__()``: a script's settings, made of several groups, run them all."""

    def __post_init__(self):
        pass


@dataclasses.dataclass(kw_only=True)
class ModelFlags(Flags):
    """The models a run evaluates: the pretrained one and brain-tuned checkpoints
    (``run_utils.models_to_evaluate``)."""

    model_name: str = flag(group="models", resumable=True,
                           help="pretrained checkpoint folder or hub id (evaluated as "
                                "'pretrained')")
    model_path: list[str] = flag([], action="append", group="models", resumable=True,
                                 help="a brain-tuned model folder (a run folder means its "
                                      "final/); repeat for several")
    logs_dir: str | None = flag(None, group="models", resumable=True,
                                help="a brain_trainer_story.py run folder: evaluates its "
                                     "--epochs")
    epochs: list[str] = flag(["final"], group="models", resumable=True,
                             help="with --logs_dir: epoch numbers (checkpoint-epoch<k>) or "
                                  "'final'")
    skip_pretrained: bool = flag(False, group="models", resumable=True,
                                 help="evaluate only the tuned models")

    def __post_init__(self):
        super().__post_init__()
        if self.skip_pretrained and not self.model_path and not self.logs_dir:
            raise UsageError("nothing to evaluate: give --model_path or --logs_dir, or drop "
                             "--skip_pretrained")


@dataclasses.dataclass(kw_only=True)
class OutputFlags(Flags):
    """The device and the results folder of a script that extracts features and writes one
    (``finish_outputs`` fills the defaults that depend on other flags)."""

    device: str = flag("auto", group="output", resumable=True, help="auto, cpu, cuda or cuda:N")
    precision: str = flag("auto", choices=("auto", "fp32", "bf16"), group="output",
                          resumable=True, help="auto: bf16 on a GPU that supports it, else fp32")
    save_dir: str = flag("outputs", group="output", resumable=True,
                         help="parent of the results folder")
    exp_name: str | None = flag(None, group="output", resumable=True,
                                help="results folder name (default: <model>_<what>)")
    cache_dir: str | None = flag(None, group="output", resumable=True,
                                 help="feature cache (default: <save_dir>/feature_cache)")
    overwrite: bool = flag(False, group="output", resumable=True,
                           help="replace the results folder of an earlier run (once the new "
                                "results are complete)")

    def finish_outputs(self, model_name, *name_parts):
        """Fill ``exp_name`` (``default_exp_name``) and ``cache_dir`` when not given."""
        if self.exp_name is None:
            self.exp_name = default_exp_name(model_name, *name_parts)
        check_exp_name(self.exp_name)
        if self.cache_dir is None:
            self.cache_dir = str(Path(self.save_dir) / "feature_cache")

"""The results file of ``brain_evaluate.py`` (``results.json``), defined once: frozen dataclasses
whose fields are its keys, written by ``alignment_outputs.write_results`` through
``results_document`` and read by ``read_results_folder`` (``report.py``,
``brain_regions.py map``).

    folder = results_schema.read_results_folder("outputs/brain_alignment/wav2vec2-base_UTS03")
    folder.results.subject, folder.results.protocol.confidence, folder.arguments["data_dir"]
    [row.cc_norm for row in folder.results.results if row.region == "all"]

Every file carries ``schema_version``. A file of another version, or of none (written before
the version was recorded), is refused in one line: evaluate again with ``brain_evaluate.py``.
A field missing, unknown or of the wrong type is a ``DatasetError`` naming the file and the
field. A change of the format is a change here, with ``SCHEMA_VERSION`` raised.
"""

import dataclasses
import json
import types
import typing
from pathlib import Path

import run_utils
from run_utils import DatasetError, UsageError

SCHEMA_VERSION = 4  # 2: intervals of drops and preferences, comparisons per measure, departures;
# 3: the penalty grid of each fitted encoding model (alpha_grid); 4: variance partitioning,
# data efficiency in whole stories (train_stories, story_sets, stories_needed)
RESULTS_FILE = "results.json"
RUN_CONFIG_FILE = "run_config.json"
FIX = "evaluate again with brain_evaluate.py"


class SchemaError(ValueError):
    """A document that does not follow the schema (where, and what is wrong)."""


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """A summary of one fitted encoding model (a row of results.csv): mean ``r`` and ``cc_norm``
    of a region in one aggregation (docs/method.md#scoring, docs/method.md#regions), the drop
    once a low-level feature set is removed (docs/method.md#low-level-reliance) and the
    uncertainty (docs/method.md#uncertainty); None where undefined or not computed."""

    model: str
    layer: int
    low_level: str  # "none", or the feature set removed
    region: str  # "all", or a region or group of --regions
    aggregation: str  # "voxel_mean" or "parcel_mean"
    train_fraction: float  # --train_fraction, or the share of the training rows used
    train_stories: int | None  # the whole stories of a --train_story_counts (None: not one)
    train_rows: int
    cc_norm: float | None
    r: float | None
    drop_percent: float | None
    drop_ci_low: float | None
    drop_ci_high: float | None
    n_voxels: int
    cc_norm_ci_low: float | None
    cc_norm_ci_high: float | None
    significant_fraction: float | None


@dataclasses.dataclass(frozen=True)
class ComparisonRow:
    """A tuned model against the pretrained one (a row of comparisons.csv) in one ``measure``:
    mean cc_norm ("cc_norm", with ``low_level`` removed), the drop without the ``low_level``
    features ("drop_percent") or the semantic preference ("semantic_preference", no region):
    both values, the difference with its block-bootstrap interval (the same resamples for both
    models) and the ``verdict`` that interval gives: "higher", "lower" or "no detectable
    difference" (None without an interval; docs/method.md#uncertainty)."""

    model: str
    baseline: str
    layer: int
    measure: str
    low_level: str
    region: str | None
    aggregation: str | None
    model_value: float | None
    baseline_value: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str | None


@dataclasses.dataclass(frozen=True)
class PreferenceRow:
    """A layer's semantic preference (a row of semantic_preference.csv,
    docs/method.md#semantic-preference)."""

    model: str
    layer: int
    semantic_r: float
    semantic_columns: int
    phonetic_r: float
    phonetic_columns: int
    preference: float
    ci_low: float | None
    ci_high: float | None


@dataclasses.dataclass(frozen=True)
class AlphaGridRow:
    """Where one fitted encoding model's per-voxel penalties sit on its grid (a row of
    alpha_grid.csv, docs/alignment.md#the-penalty-grid): the fractions of the voxels (those
    the voxel means average, less any whose CV score is the same at every alpha) whose best
    alpha is the grid's lowest or highest, the
    mean CV score per alpha, and a wider grid where more than 5% sit at an end."""

    model: str
    layer: int
    low_level: str
    train_fraction: float
    train_stories: int | None
    n_voxels: int
    lowest_fraction: float
    highest_fraction: float
    alphas: tuple[float, ...]
    mean_cv_score: tuple[float, ...] | None
    wider_alphas: tuple[float, ...] | None


@dataclasses.dataclass(frozen=True)
class PartitionRow:
    """The variance partitioning of a layer and a low-level feature set in one region and
    aggregation (a row of partition.csv, docs/method.md#variance-partitioning): the variance
    (r |r| / cc_max^2, the share of the explainable) that the banded model of both, the layer
    alone and the set alone explain, and its three parts with their intervals (None where
    undefined or not computed)."""

    model: str
    layer: int
    low_level: str  # the feature set, "a" or "a+b"
    region: str
    aggregation: str
    n_voxels: int
    joint: float | None
    layer_alone: float | None
    low_level_alone: float | None
    unique_layer: float | None
    unique_layer_ci_low: float | None
    unique_layer_ci_high: float | None
    shared: float | None
    shared_ci_low: float | None
    shared_ci_high: float | None
    unique_low_level: float | None
    unique_low_level_ci_low: float | None
    unique_low_level_ci_high: float | None


@dataclasses.dataclass(frozen=True)
class StoriesNeededRow:
    """How many whole training stories a model needs for the baseline's mean cc_norm with all
    of them (a row of stories_needed.csv, docs/alignment.md#data-efficiency): read off its
    curve over --train_story_counts and all the stories by linear interpolation at the first
    crossing, with the interval of the same reading on each bootstrap resample. None: not
    reached with all the stories (for an interval end: in more than its tail of the
    resamples), or no interval computed."""

    model: str
    baseline: str
    layer: int
    region: str
    aggregation: str
    baseline_cc_norm: float | None  # with all the training stories
    total_stories: int
    stories_needed: float | None
    ci_low: float | None
    ci_high: float | None
    less_data: float | None  # total_stories / stories_needed


@dataclasses.dataclass(frozen=True)
class Departure:
    """A setting of the run that is not the paper's (docs/method.md#departures-from-the-paper),
    both values as written on the command line."""

    setting: str
    value: str
    paper: str


@dataclasses.dataclass(frozen=True)
class FittedVoxels:
    """The voxels fitted: ``--voxels`` and how many."""

    selection: str
    n: int


@dataclasses.dataclass(frozen=True)
class Regions:
    """``--regions`` as given, the file read, its groups and the regions of regions.png."""

    given: str | None
    file: str | None
    groups: tuple[str, ...]
    shown: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The scoring choices of a run (the evaluator's flags declared part of the protocol, and
    the summaries' constants; docs/method.md#where-our-defaults-differ-from-the-authors-code)."""

    test_target: str
    normalise_by: str
    alpha_score: str
    tr_source: str
    tr_path: str | None
    followup_ceiling: float
    n_permutations: int
    n_bootstrap: int
    block_len: int
    fdr_q: float
    confidence: float
    train_fraction: tuple[float, ...]
    # flags declared part of the protocol after these (arguments.flag(protocol=True)): written
    # beside them as they are, so that a new scoring flag is recorded with no edit here
    others: dict[str, object] = dataclasses.field(default_factory=dict)
    OPEN_FIELD = "others"


@dataclasses.dataclass(frozen=True)
class AlignmentResults:
    """results.json: the run's facts and its rows."""

    schema_version: int
    subject: str
    train_stories: tuple[str, ...]
    test_story: str
    models: dict[str, str]  # label -> checkpoint
    nc_thr: float
    subject_voxels: int
    scored_voxels: int  # the voxels every voxel mean averages over
    excluded_voxels: int  # above --nc_thr but with constant test responses
    fitted_voxels: FittedVoxels
    regions: Regions
    protocol: Protocol
    departures: tuple[Departure, ...]
    results: tuple[ResultRow, ...]
    comparisons: tuple[ComparisonRow, ...]
    semantic_preference: tuple[PreferenceRow, ...]
    alpha_grid: tuple[AlphaGridRow, ...]
    partition: tuple[PartitionRow, ...]
    story_sets: dict[str, tuple[str, ...]]  # --train_story_counts -> its training stories
    stories_needed: tuple[StoriesNeededRow, ...]


@dataclasses.dataclass(frozen=True)
class ResultsFolder:
    """A brain_evaluate.py results folder, as read."""

    folder: Path
    results: AlignmentResults  # results.json
    arguments: dict  # the run's settings (run_config.json "arguments")


# ----------------------------------------------------------------------------- writing

def results_document(facts, rows, comparisons, preference_rows, alpha_rows, partition_rows,
                     story_sets, needed_rows):
    """The JSON content of results.json: ``facts`` (subject, train_stories, test_story,
    models, nc_thr, subject_voxels, scored_voxels, excluded_voxels, fitted_voxels, regions,
    protocol) and the rows, checked against the schema (a SchemaError is a bug of the writer)
    and laid out in its order, with ``schema_version``."""
    payload = json.loads(run_utils.json_text({  # as written: NaN as null, paths as strings
        "schema_version": SCHEMA_VERSION, **facts, "results": rows, "comparisons": comparisons,
        "semantic_preference": preference_rows, "alpha_grid": alpha_rows,
        "partition": partition_rows, "story_sets": story_sets, "stories_needed": needed_rows}))
    return to_json(from_json(AlignmentResults, payload))


def to_json(value):
    """A schema object as JSON content (dicts in field order, tuples as lists)."""
    if dataclasses.is_dataclass(value):
        open_field = getattr(value, "OPEN_FIELD", None)
        content = {field.name: to_json(getattr(value, field.name))
                   for field in dataclasses.fields(value) if field.name != open_field}
        return {**content, **to_json(getattr(value, open_field))} if open_field else content
    if isinstance(value, (tuple, list)):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    return value


# ----------------------------------------------------------------------------- reading

def read_json(path, what="a brain_evaluate.py results folder"):
    """The content of a JSON file; a missing or invalid one is a UsageError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: missing; is {path.parent} {what}?")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: not valid JSON ({err}); run the script again") from None


def read_results(path):
    """A results.json, checked: its schema version, then every field."""
    path = Path(path)
    content = read_json(path)
    version = content.get("schema_version") if isinstance(content, dict) else None
    if version is None:
        raise DatasetError(f"{path}: no schema_version (written before results files were "
                           f"versioned, or not by brain_evaluate.py); {FIX} to write it in "
                           f"schema version {SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{path}: results schema version {version!r}, but this toolkit reads "
                           f"version {SCHEMA_VERSION}; {FIX} (or read it with the toolkit "
                           "version that wrote it)")
    try:
        return from_json(AlignmentResults, content)
    except SchemaError as err:
        raise DatasetError(f"{path}: {err}; the file is damaged or not brain_evaluate.py's: "
                           f"{FIX}") from None


def read_results_folder(folder):
    """A brain_evaluate.py results folder: its results.json (``read_results``) and the
    arguments of its run_config.json."""
    folder = Path(folder)
    results = read_results(folder / RESULTS_FILE)
    config_path = folder / RUN_CONFIG_FILE
    config = read_json(config_path)
    if not isinstance(config, dict) or not isinstance(config.get("arguments"), dict):
        raise DatasetError(f"{config_path}: no \"arguments\" object; the file is damaged or not "
                           f"brain_evaluate.py's: {FIX}")
    return ResultsFolder(folder, results, config["arguments"])


def from_json(kind, value, where=""):
    """``value`` (JSON content) as ``kind``: a schema dataclass, ``str``, ``int``, ``float``,
    ``T | None``, ``tuple[T, ...]`` or ``dict[str, T]``; a SchemaError says where it is not."""
    if dataclasses.is_dataclass(kind):
        return _dataclass_from_json(kind, value, where)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return from_json(inner[0], value, where)
    if origin is tuple:
        _expect(isinstance(value, list), value, "a list", where)
        return tuple(from_json(args[0], item, f"{where}[{index}]")
                     for index, item in enumerate(value))
    if origin is dict:
        _expect(isinstance(value, dict), value, "an object", where)
        return {_key(key, where): from_json(args[1], item, f"{where}.{key}")
                for key, item in value.items()}
    if kind is float:
        _expect(isinstance(value, (int, float)) and not isinstance(value, bool), value,
                "a number", where)
    elif kind is int:
        _expect(isinstance(value, int) and not isinstance(value, bool), value, "an integer",
                where)
    else:
        _expect(isinstance(value, kind), value, f"a {kind.__name__}", where)
    return value


def _dataclass_from_json(kind, value, where):
    _expect(isinstance(value, dict), value, "an object", where)
    open_field = getattr(kind, "OPEN_FIELD", None)  # takes the keys not named by the others
    fields = {field.name: field for field in dataclasses.fields(kind) if field.name != open_field}
    missing = [name for name in fields if name not in value]
    if missing:
        raise SchemaError(f"{where or 'the file'} lacks {', '.join(map(repr, missing))}")
    unknown = [name for name in value if name not in fields]
    if unknown and not open_field:
        raise SchemaError(f"{where or 'the file'} has unknown field(s) "
                          f"{', '.join(map(repr, unknown))}")
    hints = typing.get_type_hints(kind)
    prefix = f"{where}." if where else ""
    named = {name: from_json(hints[name], value[name], prefix + name) for name in fields}
    if open_field:
        named[open_field] = {name: value[name] for name in unknown}
    return kind(**named)


def _key(key, where):
    _expect(isinstance(key, str), key, "a string key", where)
    return key


def _expect(holds, value, expected, where):
    if not holds:
        raise SchemaError(f"{where or 'the file'} must be {expected}, not "
                          f"{json.dumps(value, default=str)}"
                          if _short(value) else
                          f"{where or 'the file'} must be {expected}, not a "
                          f"{type(value).__name__}")


def _short(value):
    return not isinstance(value, (dict, list)) and len(json.dumps(value, default=str)) <= 40

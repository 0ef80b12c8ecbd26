"""HuggingFace datasets as the probes' input (--hf_dataset): the hub copies' layouts give the
raw readers' examples, the CLI gives the raw folders' results, the local cache by hub id, the
feature cache keyed by the dataset, and the errors."""

import csv
import importlib
import json
import logging
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

import asr
import audio_io
import downstream_data
import eval_asr
import layer_features
import probing
import speech_models
import synthetic_downstream
from run_utils import DatasetError

LAYOUTS = {"phonemes": "timit", "sentence_type": "timit", "words": "speech_commands",
           "emotion": "crema_d", "intent": "slurp"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Each synthetic dataset twice, in its distribution layout (raw/) and as its hub copy is
    laid out (hub/, a save_to_disk folder), and a tiny model."""
    root = tmp_path_factory.mktemp("hub")
    for layout in synthetic_downstream.LAYOUTS:
        synthetic_downstream.generate(layout, root / "raw" / layout, seed=2)
        synthetic_downstream.generate(layout, root / "hub" / layout, seed=2, hub=True)
    speech_models.save_tiny_model(root / "model", "wav2vec2", seed=0)
    return root


def _results(folder):
    with open(Path(folder) / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _probe(setup, task, source, save, *extra):
    module = importlib.import_module(f"eval_{task}")
    return module.main([*source, "--model_name", str(setup / "model"), "--save_dir",
                        str(setup / "out"), "--exp_name", save, "--num_epochs", "200",
                        "--layers", "1", *extra])


# ----------------------------------------------------------------------------- the layouts

@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_hub_copy_gives_the_raw_readers_examples(setup, task):
    """Same utterances (samples equal), labels and order as the distribution layout's reader;
    CREMA-D's single split gives the same actor split."""
    layout = LAYOUTS[task]
    for split in ("train", "test"):
        raw = downstream_data.task_examples(task, setup / "raw" / layout, split, seed=3)
        if task == "words" and split == "test":  # the hub copy tests on validation_list.txt
            raw = downstream_data.speech_commands_examples(setup / "raw" / layout, "validation")
        hub = downstream_data.task_examples(
            task, downstream_data.HubDataset(str(setup / "hub" / layout)), split, seed=3)
        assert [e["label"] for e in hub] == [e["label"] for e in raw]
        assert len(hub) > 10
        if task == "emotion":
            assert [e["speaker"] for e in hub] == [e["speaker"] for e in raw]
        for r, h in zip(raw, hub):
            assert isinstance(h["audio"], audio_io.DatasetAudio)
            np.testing.assert_array_equal(audio_io.read_audio(h["audio"]),
                                          audio_io.read_audio(r["audio"]))


def test_speech_commands_silence_rows_are_left_out(setup, caplog):
    table = datasets.load_from_disk(str(setup / "hub" / "speech_commands"))["train"]
    names = table.features["label"].names
    silent = sum(names[label] == "_silence_" for label in table["label"])
    assert silent > 0
    source = downstream_data.HubDataset(str(setup / "hub" / "speech_commands"))
    with caplog.at_level(logging.INFO):
        train = downstream_data.task_examples("words", source, "train")
    assert len(train) == len(table) - silent
    assert f"left out {silent} rows labelled _silence_" in caplog.text


def test_emotion_names_and_the_file_name_actor(setup, tmp_path):
    """Labels given as names (anger, happy, ...) become the CREMA-D codes, and without a
    speaker column the actor is read from the file name."""
    copy = tmp_path / "crema"
    splits = datasets.load_from_disk(str(setup / "hub" / "crema_d"))
    splits["train"].remove_columns("speaker_id").save_to_disk(str(copy))  # one Dataset: train
    with_column = downstream_data.task_examples(
        "emotion", downstream_data.HubDataset(str(setup / "hub" / "crema_d")), "test")
    from_names = downstream_data.task_examples(
        "emotion", downstream_data.HubDataset(str(copy)), "test")
    assert [(e["label"], e["speaker"]) for e in from_names] == \
        [(e["label"], e["speaker"]) for e in with_column]
    assert {e["label"] for e in from_names} == set(downstream_data.CREMA_D_EMOTIONS)


@pytest.mark.parametrize("target", ["characters", "phones"])
def test_asr_transcripts_equal_the_raw_ones(setup, target):
    source = downstream_data.HubDataset(str(setup / "hub" / "timit"))
    for include_sa in (False, True):
        for split in ("train", "test"):
            raw = asr.asr_examples(setup / "raw" / "timit", split, target, include_sa)
            hub = asr.asr_examples(source, split, target, include_sa)
            assert [e["tokens"] for e in hub] == [e["tokens"] for e in raw]
            assert [e["speaker"] for e in hub] == [e["speaker"] for e in raw]


def test_asr_needs_a_held_out_split(setup):
    source = downstream_data.HubDataset(str(setup / "hub" / "timit"), test_split="train")
    with pytest.raises(DatasetError, match="both 'train'; speech recognition needs a held-out"):
        asr.asr_examples(source, "test", "characters")


def test_asr_words_from_a_text_column(setup):
    """``--label_column text``: the transcript's words, lowercased, punctuation dropped."""
    source = downstream_data.HubDataset(str(setup / "hub" / "timit"), label_column="text")
    raw = asr.asr_examples(setup / "raw" / "timit", "test", "characters")
    assert [e["tokens"] for e in asr.asr_examples(source, "test", "characters")] == \
        [e["tokens"] for e in raw]
    assert downstream_data.hub_words("She had your dark suit, in 'greasy' wash!", "x") == \
        ["she", "had", "your", "dark", "suit", "in", "'greasy'", "wash"]


def test_audio_as_file_paths(setup, tmp_path):
    """An audio column of file paths (no bytes) is read from the files."""
    raw = downstream_data.task_examples("intent", setup / "raw" / "slurp", "test")
    table = datasets.Dataset.from_dict({"audio": [str(e["audio"]) for e in raw],
                                        "action": [e["label"] for e in raw]})
    datasets.DatasetDict(train=table, test=table).save_to_disk(str(tmp_path / "paths"))
    hub = downstream_data.task_examples(
        "intent", downstream_data.HubDataset(str(tmp_path / "paths")), "test")
    assert [e["label"] for e in hub] == [e["label"] for e in raw]
    np.testing.assert_array_equal(audio_io.read_audio(hub[3]["audio"]),
                                  audio_io.read_audio(raw[3]["audio"]))


# ----------------------------------------------------------------------------- the scripts

@pytest.mark.parametrize("task", ["emotion", "intent"])
def test_probe_on_the_hub_copy_equals_the_raw_folder(setup, task):
    layout = LAYOUTS[task]
    assert _probe(setup, task, ["--data_path", str(setup / "raw" / layout)], f"{task}_raw") == 0
    assert _probe(setup, task, ["--hf_dataset", str(setup / "hub" / layout)],
                  f"{task}_hub") == 0
    assert _results(setup / "out" / f"{task}_hub") == _results(setup / "out" / f"{task}_raw")
    config = json.loads((setup / "out" / f"{task}_hub" / "run_config.json").read_text())
    assert config["arguments"]["hf_dataset"] == str(setup / "hub" / layout)
    source = json.loads((setup / "out" / f"{task}_hub" / "results.json").read_text())["source"]
    assert source == {"hf_dataset": str(setup / "hub" / layout), "hf_config": None,
                      "splits": ["train", "train" if task == "emotion" else "test"],
                      "audio_column": "audio",
                      "label_column": "label" if task == "emotion" else "action"}
    raw = json.loads((setup / "out" / f"{task}_raw" / "results.json").read_text())["source"]
    assert raw == {"data_path": str((setup / "raw" / layout).resolve())}


def _hub_cache(table_dict, cache, hub_id, config):
    """Lay out ``table_dict`` in ``cache`` as ``load_dataset(hub_id, config)`` leaves it in the
    HuggingFace datasets cache: ``<ns>___<name>/<config>/<version>/<hash>/`` with
    ``dataset_info.json`` and ``<name>-<split>.arrow``."""
    namespace, name = hub_id.split("/")
    folder = cache / f"{namespace}___{name}" / config / "0.0.0" / "0123456789abcdef"
    folder.mkdir(parents=True)
    for split, table in table_dict.items():
        saved = cache.parent / f"saved_{split}"
        table.save_to_disk(str(saved))
        shutil.copy(next(saved.glob("data-*.arrow")), folder / f"{name}-{split}.arrow")
    info = datasets.DatasetInfo(features=next(iter(table_dict.values())).features,
                                config_name=config, dataset_name=name)
    info.splits = datasets.SplitDict({split: datasets.SplitInfo(split, num_examples=len(table))
                                      for split, table in table_dict.items()})
    info.write_to_directory(str(folder))


def test_hub_id_read_offline_from_the_local_cache(setup, tmp_path, monkeypatch):
    """``--hf_dataset google/speech_commands`` reads the cache of ``load_dataset`` with its
    usual config (v0.02) and the network off, and gives the raw folder's results; the offline
    switch is put back afterwards."""
    cache = tmp_path / "hf_cache"
    splits = datasets.load_from_disk(str(setup / "hub" / "speech_commands"))
    _hub_cache(splits, cache, "google/speech_commands", "v0.02")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    offline, switches = datasets.config.HF_HUB_OFFLINE, []
    original = datasets.load_dataset

    def load_dataset(*args, **kwargs):
        switches.append(datasets.config.HF_HUB_OFFLINE)
        return original(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = downstream_data.HubDataset("google/speech_commands", test_split="test")
    raw = downstream_data.task_examples("words", setup / "raw" / "speech_commands", "test")
    assert [e["label"] for e in downstream_data.task_examples("words", source, "test")] == \
        [e["label"] for e in raw]
    assert switches == [True] and datasets.config.HF_HUB_OFFLINE == offline
    assert downstream_data.HubDataset("google/speech_commands").layout("words").splits == \
        ("train", "validation")  # the hub copy has no split of testing_list.txt
    assert _probe(setup, "words", ["--hf_dataset", "google/speech_commands",
                                   "--hf_split_test", "test"], "words_id") == 0
    assert _probe(setup, "words", ["--data_path", str(setup / "raw" / "speech_commands")],
                  "words_raw") == 0
    assert _results(setup / "out" / "words_id") == _results(setup / "out" / "words_raw")
    with pytest.raises(DatasetError, match="google/speech_commands: cannot be read .* cache"):
        downstream_data.load_hub_splits("google/speech_commands", "v0.01")
    with pytest.raises(DatasetError, match="nobody/nothing: cannot be read by the datasets "
                                           "library without the network"):
        downstream_data.load_hub_splits("nobody/nothing")
    assert datasets.config.HF_HUB_OFFLINE == offline


def test_features_are_cached_by_the_dataset(setup, tmp_path, monkeypatch):
    """The second run reads the cached features; a dataset saved again with other audio gets
    a key of its own, the same dataset loaded again the same key."""
    source = ["--hf_dataset", str(setup / "hub" / "slurp"), "--cache_dir", str(tmp_path)]
    assert _probe(setup, "intent", source, "cached") == 0
    extracted = []
    original = layer_features.pooled_layer_features

    def counting(backbone, preprocessor, waveforms, *args, **kwargs):
        extracted.append(True)
        return original(backbone, preprocessor, waveforms, *args, **kwargs)

    monkeypatch.setattr(layer_features, "pooled_layer_features", counting)
    assert _probe(setup, "intent", source, "cached", "--overwrite") == 0
    assert extracted == []

    def key(path):
        return downstream_data.hub_split(downstream_data.HubDataset(str(path)).layout("intent"),
                                         "test")[2][0].split_key

    splits = datasets.load_from_disk(str(setup / "hub" / "slurp"))
    changed = datasets.DatasetDict(train=splits["train"],
                                   test=splits["test"].select(range(1, len(splits["test"]))))
    changed.save_to_disk(str(tmp_path / "changed"))
    assert key(setup / "hub" / "slurp") == key(setup / "hub" / "slurp")
    assert key(tmp_path / "changed") != key(setup / "hub" / "slurp")
    changed_source = ["--hf_dataset", str(tmp_path / "changed"), "--cache_dir", str(tmp_path)]
    assert _probe(setup, "intent", changed_source, "changed") == 0
    assert extracted == [True, True]  # both splits: saved elsewhere, each is keyed anew


# ----------------------------------------------------------------------------- bad input

def test_flag_mistakes_are_parser_errors(setup, capsys):
    cases = [([], "one of --data_path"),
             (["--data_path", "x", "--hf_dataset", "y"], "one of --data_path"),
             (["--data_path", "x", "--label_column", "y"], "--label_column chooses from a "
                                                           "HuggingFace dataset")]
    for flags, message in cases:
        with pytest.raises(SystemExit):
            probing.parse_args("words", [*flags, "--model_name", "m"])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probing.parse_args("intent", ["--hf_dataset", "y", "--audio_dir", "z", "--model_name",
                                      "m"])
    assert "--audio_dir" in capsys.readouterr().err


def test_help_gives_the_usual_hub_layout(capsys):
    with pytest.raises(SystemExit):
        probing.parse_args("words", ["--help"])
    text = capsys.readouterr().out
    assert "google/speech_commands (config v0.02)" in text and "--label_column" in text
    with pytest.raises(SystemExit):
        eval_asr.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "asr word_detail; asr_phones phonetic_detail" in text


def test_a_training_split_chosen_alone_is_split_by_speaker_for_emotion():
    assert downstream_data.HubDataset("x", train_split="all").layout("emotion").splits == \
        ("all", "all")
    assert downstream_data.HubDataset("x", train_split="all").layout("intent").splits == \
        ("all", "test")


def test_bad_datasets_stop_with_one_line_naming_them(setup, tmp_path):
    hub = str(setup / "hub" / "slurp")
    script = tmp_path / "slurp_script" / "slurp_script.py"  # a clone of a script-era hub repo
    script.parent.mkdir()
    script.write_text("import datasets\n")
    cases = [
        (downstream_data.HubDataset(hub, label_column="intent_name"),
         r"\[test\]: no column 'intent_name'; its columns are audio, slurp_id, .*"
         r"\(choose with --label_column\)"),
        (downstream_data.HubDataset(hub, audio_column="sound"), "(choose with --audio_column)"),
        (downstream_data.HubDataset(hub, audio_column="slurp_id"),
         r"column 'slurp_id' holds .* not audio or audio file paths"),
        (downstream_data.HubDataset(hub, test_split="validation"),
         "no split 'validation'; it has train, test"),
        (downstream_data.HubDataset(hub, test_split="train"), "needs a held-out split"),
        (downstream_data.HubDataset(str(tmp_path / "absent")), "cannot be read by the datasets"),
        (downstream_data.HubDataset(hub, config="clean"), "save_to_disk folder holds one config"),
        (downstream_data.HubDataset(str(script.parent)),
         r"cannot be read .* \(Dataset scripts are no longer supported"),
    ]
    for source, message in cases:
        with pytest.raises(DatasetError, match=message):
            downstream_data.task_examples("intent", source, "test")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(hub, corrupt)
    arrow = next((corrupt / "test").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=f"{corrupt}: cannot be read"):
        downstream_data.task_examples("intent", downstream_data.HubDataset(str(corrupt)), "test")


def test_rows_without_audio_or_label_are_named(setup, tmp_path, monkeypatch):
    """A row whose audio is only a path that is gone (as in caches of the script-era
    ``load_dataset``, which kept the extracted files' paths), and a row without a label."""
    audio = pa.array([{"bytes": None, "path": str(tmp_path / "gone.flac")}] * 3,
                     type=pa.struct({"bytes": pa.binary(), "path": pa.string()}))
    table = datasets.Dataset(pa.table({"audio": audio, "action": ["a", "b", "c"]}))
    table = table.cast_column("audio", datasets.Audio(sampling_rate=16000))
    monkeypatch.setattr(downstream_data, "load_hub_splits",
                        lambda path, config=None: {"train": table, "test": table})
    example = downstream_data.task_examples("intent", downstream_data.HubDataset("old"), "test")[2]
    with pytest.raises(DatasetError, match=r"^old \[test\] row 2 \(gone.flac\): no audio bytes"):
        audio_io.read_audio(example["audio"])
    monkeypatch.undo()
    crema = datasets.load_from_disk(str(setup / "hub" / "crema_d"))["train"]
    labels = list(crema["label"])
    labels[5] = -1
    crema.remove_columns("label").add_column(
        "label", labels, feature=crema.features["label"]).save_to_disk(str(tmp_path / "c"))
    with pytest.raises(DatasetError, match=r"\[train\] row 5 .*: no label"):
        downstream_data.task_examples("emotion", downstream_data.HubDataset(str(tmp_path / "c")),
                                      "train")


def test_emotion_speaker_column_and_damaged_audio_are_named(setup, tmp_path):
    hub = str(setup / "hub" / "crema_d")
    with pytest.raises(DatasetError, match=r"no column 'actor'; .*\(choose with "
                                           r"--speaker_column\)"):
        downstream_data.task_examples("emotion", downstream_data.HubDataset(
            hub, speaker_column="actor"), "train")
    crema = datasets.load_from_disk(hub)["train"].cast_column("audio",
                                                              datasets.Audio(decode=False))
    broken = crema.map(lambda row, i: {"audio": {"bytes": b"RIFF0000garbage" if i == 4
                                                 else row["audio"]["bytes"],
                                                 "path": row["audio"]["path"]}},
                       with_indices=True)
    broken.save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(DatasetError, match=r"\[train\] row 4 .*: unreadable audio"):
        downstream_data.task_examples("emotion", downstream_data.HubDataset(
            str(tmp_path / "broken")), "train")


def test_unknown_labels_name_the_row(setup, tmp_path, caplog):
    crema = datasets.load_from_disk(str(setup / "hub" / "crema_d"))["train"]
    names = [crema.features["label"].names[i] for i in crema["label"]]
    names[7] = "boredom"
    crema.remove_columns("label").add_column("label", names).save_to_disk(str(tmp_path / "bored"))
    assert probing.main("emotion", ["--hf_dataset", str(tmp_path / "bored"), "--model_name",
                                    str(setup / "model"), "--save_dir", str(tmp_path)]) == 1
    assert "[train] row 7" in caplog.text and "label 'BOR' is not one of the 6" in caplog.text

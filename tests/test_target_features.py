"""target_features.py: the BigSLM-tuned (speech) and LM-tuned (text) target files, on a small
synthetic dataset with a tiny wav2vec2 and a tiny random GPT-2 (built from configs, nothing
downloaded)."""

import json
import logging
import shutil

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModel, AutoTokenizer, GPT2Config, PreTrainedTokenizerFast

import alignment_analyses
import brain_trainer_story
import data_utils
import eval_utils
import layer_features
import run_utils
import speech_models
import synthetic_data
import target_features
from run_utils import DatasetError

STORIES = ["legacy", "life", "souls", "stagefright", data_utils.TEST_STORY]
QUICK = ["--context_s", "2", "--chunk_s", "1", "--log_level", "WARNING"]  # speech windows
GPT_HIDDEN = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(dataset, tiny wav2vec2 folder, tiny GPT-2 folder with a byte-level BPE tokenizer whose
    small vocabulary splits most words into several sub-tokens)."""
    root = tmp_path_factory.mktemp("target_features")
    data = root / "ds"
    synthetic_data.generate(data, seed=2, subjects=(1,), n_train_stories=2, train_trs=40,
                            test_trs=40, n_voxels=20, n_words=12)
    speech_models.save_tiny_model(root / "wav2vec2", "wav2vec2")
    words = [w for story in STORIES for _, _, w in data_utils.Dataset(data).words(story)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator([" ".join(words)], trainers.BpeTrainer(
        vocab_size=270, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(root / "gpt2")
    torch.manual_seed(0)
    with speech_models.quiet_transformers():
        AutoModel.from_config(GPT2Config(
            n_layer=2, n_embd=GPT_HIDDEN, n_head=2, n_positions=512, bos_token_id=0,
            eos_token_id=0, vocab_size=tokenizer.get_vocab_size())).save_pretrained(root / "gpt2")
    return data, root / "wav2vec2", root / "gpt2"


def _make(kind, model, data, out, *extra):
    return target_features.main([kind, "--model_name", str(model), "--data_dir", str(data),
                                 "--out", str(out), "--log_level", "WARNING", *extra])


def _read(path):
    with h5py.File(path, "r") as handle:
        return {story: handle[story][()] for story in handle}, dict(handle.attrs)


def _one_error(caplog):
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Traceback" not in caplog.text, errors
    return errors[0]


def test_speech_features_are_the_evaluators_trimmed_to_the_response_rows(setup, tmp_path):
    data, wav2vec2, _ = setup
    assert _make("speech", wav2vec2, data, tmp_path / "speech.hf5", *QUICK) == 0
    written, attrs = _read(tmp_path / "speech.hf5")
    encoder = speech_models.load_encoder(wav2vec2)
    assert attrs["kind"] == "speech" and attrs["layer"] == encoder.depth  # the last by default
    assert attrs["fingerprint"] == encoder.fingerprint
    dataset = data_utils.Dataset(data)
    extraction = layer_features.Extraction(2.0, 1.0, 16, False, None)
    grid = layer_features.model_tr_features(encoder, [encoder.depth], dataset, STORIES,
                                            extraction, tmp_path / "reference_cache")[
        encoder.depth]
    assert sorted(written) == STORIES
    for story in STORIES:
        rows = dataset.response_rows(story)
        assert written[story].shape == (rows, 32) and written[story].dtype == np.float32
        np.testing.assert_allclose(written[story], grid[story][10:10 + rows], rtol=0, atol=1e-6)
        assert len(grid[story]) == rows + 15


def _per_word_state(model, tokenizer, context, layer):
    ids = tokenizer(context)["input_ids"]
    with torch.inference_mode():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    return hidden[layer][0, -1].numpy()


def test_text_features_equal_a_per_word_loop_placed_at_the_word_midpoints(setup, tmp_path):
    data, _, gpt2 = setup
    assert _make("text", gpt2, data, tmp_path / "text.hf5", "--context_words", "3",
                 "--layer", "1", "--batch_size", "7") == 0
    written, attrs = _read(tmp_path / "text.hf5")
    assert attrs["kind"] == "text" and attrs["layer"] == 1
    model, tokenizer = AutoModel.from_pretrained(gpt2).eval(), AutoTokenizer.from_pretrained(gpt2)
    assert attrs["fingerprint"] == speech_models.fingerprint(model)
    assert sorted(written) == STORIES
    split, dataset = 0, data_utils.Dataset(data)
    for story in STORIES:
        entries = dataset.words(story)
        words = [word for _, _, word in entries]
        # each word with exactly its 3 preceding words, one forward pass per word
        states = np.stack([_per_word_state(model, tokenizer, " ".join(words[max(0, i - 3):i + 1]),
                                           1) for i in range(len(words))])
        split += sum(len(tokenizer(" " + word)["input_ids"]) > 1 for word in words)
        np.testing.assert_allclose(
            target_features.word_states(model, tokenizer, words, 1, 3, batch_size=7), states,
            rtol=0, atol=1e-5)
        midpoints = np.array([(start + end) / 2 for start, end, _ in entries])
        grid = eval_utils.lanczos_interp(states, midpoints, dataset.tr_times(story))
        rows = dataset.response_rows(story)
        assert written[story].shape == (rows, GPT_HIDDEN) and written[story].dtype == np.float32
        np.testing.assert_allclose(written[story], grid[10:len(grid) - 5], rtol=0, atol=1e-5)
    assert split > 0  # the word's state is its last sub-token's


def test_lm_tuning_end_to_end_and_a_story_missing_from_the_file(setup, tmp_path, caplog):
    data, wav2vec2, gpt2 = setup
    assert _make("text", gpt2, data, tmp_path / "lm.hf5") == 0
    trainer = ["--model_name", str(wav2vec2), "--subject", "1", "--data_dir", str(data),
               "--save_dir", str(tmp_path), "--num_epochs", "1", "--batch_size", "8",
               "--warmup_epochs", "1", "--log_level", "WARNING"]
    assert brain_trainer_story.main([*trainer, "--exp_name", "lm",
                                     "--target_features", str(tmp_path / "lm.hf5")]) == 0
    head = load_file(str(tmp_path / "lm" / "final" / "brain_head.safetensors"))["weight"]
    assert head.shape[0] == GPT_HIDDEN and (tmp_path / "lm" / "final" / "config.json").is_file()
    assert _make("text", gpt2, data, tmp_path / "partial.hf5", "--stories", "souls",
                 "legacy") == 0
    caplog.clear()
    assert brain_trainer_story.main([*trainer, "--exp_name", "partial",
                                     "--target_features", str(tmp_path / "partial.hf5")]) == 1
    assert "no dataset for story 'stagefright'" in _one_error(caplog)


def test_an_existing_file_is_replaced_only_with_overwrite(setup, tmp_path, caplog):
    data, _, gpt2 = setup
    out = tmp_path / "text.hf5"
    assert _make("text", gpt2, data, out, "--stories", "souls") == 0
    before = out.read_bytes()
    assert _make("text", gpt2, data, out, "--stories", "souls", "--layer", "1") == 1
    assert "exists; pass --overwrite" in _one_error(caplog) and out.read_bytes() == before
    assert _make("text", gpt2, data, out, "--stories", "souls", "--layer", "1",
                 "--overwrite") == 0
    assert _read(out)[1]["layer"] == 1


@pytest.mark.parametrize("case", ["story", "textgrid", "wav", "layer", "not_causal"])
def test_bad_input_is_one_line_naming_the_fix(setup, tmp_path, caplog, case):
    data, wav2vec2, gpt2 = setup
    kind, model, extra = "text", gpt2, ["--stories", "souls"]
    if case in ("textgrid", "wav"):
        data = shutil.copytree(data, tmp_path / "ds")
        if case == "textgrid":
            (data / "derivative" / "TextGrids" / "souls.TextGrid").unlink()
        else:
            (data / "stimuli" / "souls.wav").unlink()
            kind, model = "speech", wav2vec2
    expected = {"story": "no entry for story 'nosuchstory'",
                "textgrid": "souls.TextGrid: TextGrid of story 'souls' is missing",
                "wav": "souls.wav: stimulus WAV of story 'souls' is missing",
                "layer": "--layer 5: ", "not_causal": "is not a causal text LM"}[case]
    if case == "story":
        extra = ["--stories", "souls", "nosuchstory"]
    elif case == "layer":
        extra += ["--layer", "5"]
    elif case == "not_causal":
        model = wav2vec2
    assert _make(kind, model, data, tmp_path / "out.hf5", *extra) == 1
    assert expected in _one_error(caplog) and not (tmp_path / "out.hf5").exists()


def test_the_file_reads_back_as_response_rows_and_onto_the_tr_grid(setup, tmp_path):
    """Dataset.target_features (the trainer's and the evaluator's reader) gives the rows
    written; alignment_analyses.on_tr_grid puts them back at the grid's untrimmed TRs."""
    data, _, gpt2 = setup
    out = tmp_path / "text.hf5"
    assert _make("text", gpt2, data, out, "--stories", "souls", data_utils.TEST_STORY) == 0
    written, _ = _read(out)
    dataset = data_utils.Dataset(data)
    rows = dataset.target_features(out, ["souls", data_utils.TEST_STORY])
    for story, values in rows.items():
        np.testing.assert_array_equal(values, written[story])
        grid = alignment_analyses.on_tr_grid(values, len(dataset.tr_times(story)))
        assert grid.shape == (len(dataset.tr_times(story)), GPT_HIDDEN)
        np.testing.assert_array_equal(eval_utils.trim_rows(grid), written[story])
        assert np.isnan(grid[:10]).all() and np.isnan(grid[-5:]).all()
    with pytest.raises(data_utils.DatasetError, match="no dataset for story 'legacy'"):
        dataset.target_features(out, ["legacy"])

def test_a_target_file_is_used_only_for_the_files_it_was_made_from(setup, tmp_path, caplog):
    """The file records the content of the WAVs (speech) or TextGrids (text) it was made
    from: another dataset's story of the same name and length is refused in one line."""
    data, _, gpt2 = setup
    out = tmp_path / "text.hf5"
    assert _make("text", gpt2, data, out, "--stories", "souls", "legacy") == 0
    record = json.loads(_read(out)[1]["settings"])["inputs"]
    dataset = data_utils.Dataset(data)
    assert record["stories"]["souls"] == {
        "textgrid": run_utils.content_hash(dataset.textgrid_path("souls"))}
    assert set(dataset.target_features(out, ["souls", "legacy"])) == {"souls", "legacy"}
    copy = data_utils.Dataset(shutil.copytree(data, tmp_path / "ds"))
    path = copy.textgrid_path("souls")
    path.write_text(path.read_text().replace('"AH0"', '"AA0"', 1))  # another story's words
    with pytest.raises(DatasetError) as refused:
        copy.target_features(out, ["souls", "legacy"])
    message = str(refused.value)
    assert str(out) in message and str(path) in message and "\n" not in message
    assert copy.target_features(out, ["legacy"])  # the other story is the one it was made of


def test_a_target_file_holding_nan_is_refused(setup, tmp_path):
    data, _, _ = setup
    dataset = data_utils.Dataset(data)
    out = tmp_path / "nan.hf5"
    with h5py.File(out, "w") as handle:
        values = np.zeros((dataset.response_rows("souls"), 3))
        values[2, 1] = np.nan
        handle["souls"] = values
    with pytest.raises(DatasetError, match="'souls' holds values that are not finite numbers"):
        dataset.target_features(out, ["souls"])

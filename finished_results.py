"""The resume store of an evaluation: each (model, layer, analysis) result kept as soon as it is
done in ``<save_dir>/.<exp_name>.partial/``, beside the settings its numbers depend on, so that
``--resume`` continues a killed run without fitting a finished result again.
"""

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np

import arguments
import noise_ceilings
import run_utils
from run_utils import UsageError

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"  # in the partial folder: what its finished results depend on


def partial_folder(out_dir):
    """``<save_dir>/.<exp_name>.partial``: the finished results of a run not yet complete."""
    return out_dir.parent / f".{out_dir.name}.partial"


def result_settings(settings, dataset, subject, stories, dtype):
    """What the numbers of a (model, layer, analysis) result depend on beyond its key: the
    flags ``--resume`` may not change (``arguments.fixed_values``), the stories, the autocast
    dtype and the identity of the input files (noise ceiling, respdict, responses, WAVs,
    TextGrids, a --regions file, word vectors or semantic features)."""
    all_stories = [*stories, settings.test_story]
    files = [noise_ceilings.ceiling_file(subject, settings.nc_path, dataset, settings.test_story),
             *dataset.input_files(subject, all_stories)]
    if settings.regions is not None and Path(settings.regions).is_file():
        files.append(settings.regions)  # (a source's regions come from the anatomy, cached)
    if settings.semantic_preference:
        files += [path for path in (settings.word_vectors, settings.semantic_features)
                  if path is not None and Path(path).is_file()]
    fixed = {f"--{name}": value for name, value in sorted(arguments.fixed_values(settings).items())}
    return {**fixed, "subject": subject, "train_stories": stories, "autocast": str(dtype),
            "input files": run_utils.file_identity(files)}


class FinishedResults:
    """The (model, layer, analysis) results a run has finished, kept in the folder ``path``.

    One ``<digest of the key>.npz`` per result (its arrays and numbers), written atomically as
    soon as it is done, beside ``settings.json`` (``result_settings``); the folder (with the
    project's marker) is made with the first result."""

    def __init__(self, path, settings):
        self.path = Path(path)
        self.settings = json.loads(run_utils.json_text(settings))  # as read back from the file

    @classmethod
    def open(cls, path, settings, resume, overwrite):
        """The finished results at ``path``: an interrupted run's with ``resume`` (refused when
        its settings differ); else none, an earlier run's folder being discarded with
        ``overwrite`` and refused without."""
        finished = cls(path, settings)
        run_utils.recover(finished.path)
        if not finished.path.exists():
            if resume:
                logger.info("%s: no finished results to resume; starting from the beginning",
                            finished.path)
            return finished
        if resume:
            finished.check_settings()
            logger.info("resuming with the %d finished results in %s",
                        len(list(finished.path.glob("[!.]*.npz"))), finished.path)
            return finished
        if not overwrite:
            raise run_utils.OutputExistsError(
                f"{finished.path} holds the finished results of an interrupted run; pass "
                "--resume to continue it or --overwrite to discard them")
        run_utils.check_replaceable(finished.path, overwrite=True)  # ours to delete
        finished.remove()
        logger.warning("discarded the finished results of an interrupted run in %s "
                       "(--overwrite)", finished.path)
        return finished

    def check_settings(self):
        """A UsageError unless the folder's results were made with ``self.settings``."""
        try:
            saved = json.loads((self.path / SETTINGS_FILE).read_text())
        except (OSError, ValueError):
            raise UsageError(f"{self.path / SETTINGS_FILE}: missing or unreadable; pass "
                             f"--overwrite without --resume to discard {self.path}") from None
        changed = [name for name in sorted(saved.keys() | self.settings.keys())
                   if saved.get(name) != self.settings.get(name)]
        if changed:
            raise UsageError(f"{self.path}: its finished results were made with other settings "
                             f"({', '.join(changed)}); resume with the same ones, or pass "
                             "--overwrite without --resume to discard them")

    def _file(self, key):
        return self.path / f"{run_utils.digest(json.dumps(key, sort_keys=True))}.npz"

    def load(self, key):
        """The finished result of ``key`` (a dict): name -> array (numbers for 0-d ones), or
        None when there is none (or it is unreadable: logged, to be computed again)."""
        path = self._file(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            logger.warning("finished result %s is unreadable (%s); computing it again", path, err)
            return None
        return {name: values.item() if values.ndim == 0 else values
                for name, values in arrays.items()}

    def save(self, key, result):
        """Keep the result (name -> array or number) of ``key``, atomically."""
        if not self.path.exists():
            with run_utils.atomic_output(self.path) as staging:
                run_utils.mark_folder(staging, "finished results of an evaluation")
                run_utils.write_json(staging / SETTINGS_FILE, self.settings)
        with run_utils.atomic_output(self._file(key), overwrite=True) as tmp:
            np.savez(tmp, **{name: np.asarray(values) for name, values in result.items()})

    def remove(self):
        """Delete the folder (the run is complete, or its results are discarded)."""
        if self.path.exists():
            shutil.rmtree(self.path)

"""Run plumbing shared by every script: errors, logging, atomic writes, output folders, run
configs, model choice and caches.

Scripts are built the same way (their flags declared once, ``arguments``)::

    @dataclasses.dataclass(kw_only=True)
    class Settings(...groups...):
        ...

    def parse_args(argv=None):
        return arguments.parse(Settings, argv, description="...")

    def run(settings):
        ...

    def main(argv=None):
        return run_utils.main(parse_args, run, argv)

``run_utils.main`` turns a ``UserError`` (a problem with the data, the model or the flags,
whose message says the fix) into one logged line and exit status 1.

Output folders (``output_folder``, ``RunFolder``) are never lost: a run writes into a fresh
staging folder, or replaces an old run only once it has started successfully; only folders
that carry the project's marker file are ever replaced; a lock file beside the folder keeps
two runs of the same name apart.
"""

import contextlib
import csv
import errno
import functools
import hashlib
import importlib
import json
import logging
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

RUN_MARKER = ".brain_tuning_run"  # written into every output folder the project makes
PACKAGES = ("numpy", "scipy", "h5py", "soundfile", "librosa", "torch", "transformers", "sklearn",
            "peft")
# OSErrors that mean "cannot write here", not a bug: permission, read-only, full disk, quota.
WRITE_FAILURES = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
# OSErrors of a file where a folder is wanted, or the other way round: a path in the way
PATH_CONFLICTS = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST)
FULL_DISK_BYTES = 2**20  # a write that fails with less free space than this: the disk is full
LOG_PROGRESS_S = 30  # off a terminal, long work logs one progress line this often (seconds)
KEY_CHARS = 16  # hex characters of a cache-key digest
HASH_WHOLE_BYTES = 16 * 2**20  # files up to this size are hashed whole (content_hash)
HASH_BLOCK_BYTES = 2**20
HASH_SAMPLED_BLOCKS = 16  # blocks hashed between the first and the last of a larger file
_CONTENT_HASHES = {}  # (path, inode, size, times) -> content hash, for this process


# ----------------------------------------------------------------------------- errors

class UserError(Exception):
    """A problem the user can fix (data, model, flags, output folder); the message says how.

    Scripts stop on it with one line and exit status 1 (``main``)."""


class UsageError(UserError, ValueError):
    """Flags or arguments that do not fit together, found after parsing."""


class DatasetError(UserError, ValueError):
    """A problem with the dataset on disk; the message names the file and says the fix."""


class OutputExistsError(UserError, FileExistsError):
    """An output that would be replaced without ``--overwrite``, or that is not ours to replace."""


# ----------------------------------------------------------------------------- scripts

def setup_logging(level="INFO"):
    """Log lines with time and level to stderr."""
    logging.basicConfig(level=str(level).upper(), format="%(asctime)s %(levelname)s %(message)s")


def main(parse_args, run, argv=None):
    """Entry point of a script: parse, set up logging, ``run(args)``; returns the exit status.

    A ``UserError`` becomes one logged line and status 1 (no traceback)."""
    args = parse_args(argv)
    setup_logging(getattr(args, "log_level", "INFO"))
    try:
        run(args)
    except UserError as err:
        logger.error("%s", err)
        return 1
    except OSError as err:
        if err.errno not in WRITE_FAILURES + PATH_CONFLICTS:
            raise
        logger.error("%s", write_failure_message(err))
        return 1
    return 0


class LazyModule:
    """A module imported on first use, ``torch = run_utils.LazyModule("torch")``: the scripts'
    ``--help`` and argument errors need no torch or transformers, which take seconds to import.
    Unlike ``importlib.util.LazyLoader`` it leaves ``sys.modules`` alone, so every other import
    of the module is an ordinary one (torch breaks when its first import is a submodule's)."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attribute):
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self):
        return f"<{self._name}, imported on first use>"


class _Discard:
    """A file that keeps nothing (what tqdm would still write itself: its closing newline)."""

    def write(self, text):
        pass

    def flush(self):
        pass


class LogProgress(tqdm):
    """A tqdm bar for logs: instead of redrawing itself it logs its line (``epoch 1/4:  40%
    4/10 [00:12<00:18, 3.00s/it, loss=0.93]``) at most every ``LOG_PROGRESS_S`` seconds, also
    when its postfix changes, and once at the end."""

    def __init__(self, *args, **kwargs):
        self._logged_at, self._closing = 0.0, False
        kwargs.setdefault("mininterval", LOG_PROGRESS_S)
        kwargs.setdefault("bar_format", "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} "
                                        "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
        super().__init__(*args, file=_Discard(), **kwargs)  # lines go to the log, not stderr

    def display(self, msg=None, pos=None):
        now = self._time()
        if msg == "" or self.n == 0 or (  # the bar's clearing, its empty start, too soon
                not self._closing and now - self._logged_at < self.mininterval):
            return True
        self._logged_at = now
        meter = dict(self.format_dict)
        if not self.total:  # no percentage or time left to give
            meter["bar_format"] = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        logger.info("%s", msg or self.format_meter(**meter))
        return True

    def close(self):
        self._closing = not self.disable
        super().close()


def progress(iterable=None, **options):
    """A progress bar (tqdm's options) on a terminal or in a notebook, else ``LogProgress``:
    logs of runs in the background or under SLURM get a line every ``LOG_PROGRESS_S``
    seconds, not a redraw every few tenths of a second."""
    if sys.stderr.isatty() or "ipykernel" in sys.modules:
        return tqdm(iterable, **options)
    return LogProgress(iterable, **options)


def check_free_space(path, nbytes):
    """An OSError (ENOSPC, naming ``path``) unless the disk of ``path`` has room for ``nbytes``
    and ``FULL_DISK_BYTES`` more: checked before h5py writes, which can crash the process
    (not raise) when the disk fills under it."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < nbytes + FULL_DISK_BYTES:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def write_failure_message(err):
    """One line for an OSError of a full disk or a folder we may not write: the path and
    what to do. Files written atomically are left as they were before the write."""
    where = err.filename or "an output file"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space (or raise the quota) or choose another --save_dir/--cache_dir"
    elif err.errno in PATH_CONFLICTS:
        fix = ("a file stands where a folder is wanted, or a folder where a file is: move it "
               "or choose other paths")
    else:
        fix = "check its permissions or choose another --save_dir/--cache_dir"
    return f"{where}: {err.strerror}; {fix} (files written earlier are intact)"


def unique_names(named):
    """dict from (name, value) pairs; a repeated name gets a suffix: "word", "word#2", ..."""
    result = {}
    for name, value in named:
        key, copy = name, 1
        while key in result:
            copy += 1
            key = f"{name}#{copy}"
        result[key] = value
    return result


# ----------------------------------------------------------------------------- writing

def _temporary(path, tag):
    return path.with_name(f".{path.stem}.{tag}{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path, overwrite=False):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Refuses to replace an existing ``path`` unless ``overwrite``. The temporary name keeps the
    suffix so that writers which choose a format by extension (numpy, soundfile) work. A
    folder is swapped by renames (old aside, new in, old removed), so that at every instant
    either the old or the new folder is complete: after a kill between the renames
    ``recover(path)`` puts the old one back. A write that fails on a full disk is an
    ``OSError`` (ENOSPC) naming ``path``, whatever the writer raised.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, "tmp")
    try:
        try:
            yield tmp
        except OSError as err:  # name the file the user asked for, not our temporary
            if err.filename is not None and Path(err.filename) == tmp:
                err.filename = str(path)
            raise
        except UserError:
            raise
        except Exception as err:
            # torch.save and safetensors report a full disk as RuntimeError/SafetensorError
            if shutil.disk_usage(path.parent).free < FULL_DISK_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
            raise
        if tmp.is_dir() and path.is_dir():
            aside = _temporary(path, "old")
            os.replace(path, aside)
            os.replace(tmp, path)
            shutil.rmtree(aside)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(path, tag):
    """Temporaries of ``atomic_output(path)`` with the given tag: (pid, path), newest first."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.{tag}(\d+){re.escape(path.suffix)}")
    found = [(int(m.group(1)), p) for p in path.parent.glob(f".{path.stem}.{tag}*")
             if (m := pattern.fullmatch(p.name))]
    return sorted(found, key=lambda item: item[1].stat().st_mtime, reverse=True)


def recover(path):
    """Undo what a killed ``atomic_output(path)`` left: put a folder set aside back when
    ``path`` is missing, and remove the temporaries of processes that no longer run.

    Returns True when ``path`` was restored."""
    path = Path(path)
    restored = False
    for pid, aside in _leftovers(path, "old"):
        if _pid_alive(pid) and pid != os.getpid():
            continue
        if not path.exists():
            os.replace(aside, path)
            restored = True
            logger.warning("%s was missing after an interrupted write: restored it from %s",
                           path, aside.name)
        else:
            _remove(aside)
    for pid, tmp in _leftovers(path, "tmp"):
        if not _pid_alive(pid) or pid == os.getpid():
            _remove(tmp)
    return restored


def write_text(path, text, overwrite=False):
    """Write a text file atomically (see ``atomic_output``)."""
    with atomic_output(path, overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(value):
    """``value`` with every non-finite float (NaN, +-Infinity, numpy's too) replaced by None,
    numpy scalars and arrays made plain Python, so that it is valid JSON."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(payload, indent=2):
    """Valid JSON text of ``payload`` (NaN and Infinity written as null, see ``json_safe``)."""
    return json.dumps(json_safe(payload), indent=indent, default=str, allow_nan=False)


def write_json(path, payload, overwrite=False):
    """Write JSON atomically (see ``atomic_output``); NaN and Infinity become null."""
    write_text(path, json_text(payload) + "\n", overwrite)


def write_csv(path, rows, overwrite=False):
    """Write a list of dicts as CSV atomically, with the first row's keys as the header."""
    with atomic_output(path, overwrite) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def comparison_table(rows, value_key):
    """Text table of ``row[value_key]``: models as rows, layers as columns (rows are dicts with
    "model" and "layer")."""
    models = list(dict.fromkeys(row["model"] for row in rows))
    layers = sorted({row["layer"] for row in rows})
    value = {(row["model"], row["layer"]): float("nan") if row[value_key] is None
             else row[value_key] for row in rows}
    width = max(len(m) for m in models) + 2
    lines = [f"{value_key}:", "model".ljust(width) + "".join(f"L{layer:<7}" for layer in layers)]
    for model in models:
        lines.append(model.ljust(width) + "".join(
            f"{value.get((model, layer), float('nan')):<8.3f}" for layer in layers))
    return "\n".join(lines)


SUMMARY_VOXELS_NAME = "summary_voxels.npy"  # indices of the voxels every summary averages over


def voxel_results_name(model, layer, analysis="none", kind="voxels"):
    """File name of the per-voxel results (``kind`` "voxels") or test predictions
    ("predictions") of a model, layer and low-level analysis (``brain_evaluate.py`` writes
    them, ``report.py`` reads them)."""
    safe = model.replace("/", "_").replace(" ", "_")
    suffix = "" if analysis == "none" else f"_without_{analysis}"
    if analysis.startswith("partition "):
        suffix = f"_partitioned_with_{analysis.removeprefix('partition ')}"
    return f"{kind}_{safe}_layer{layer}{suffix}.npz"


# ----------------------------------------------------------------------------- run configs

def run_metadata():
    """Command line, time, host and package versions, to store next to results."""
    versions = {}
    for module in PACKAGES:
        imported = sys.modules.get(module)
        if imported is not None:
            versions[module] = getattr(imported, "__version__", "unknown")
    return {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "code": code_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


@functools.lru_cache(maxsize=1)
def code_version():
    """The toolkit's version: the git commit of its checkout, "+changes" when files git tracks
    differ from it, or None outside a git checkout (a copy without .git)."""
    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                  "--untracked-files=no"], capture_output=True, text=True,
                                 timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+changes" if changed.stdout.strip() else "")


def run_config(arguments, **facts):
    """What a run's ``run_config.json`` holds: the arguments (a dict, once:
    ``arguments.as_dict``), the facts the run found (stories, models, ...) and
    ``run_metadata()`` under "run"."""
    return {"arguments": dict(arguments or {}), **facts, "run": run_metadata()}


# ----------------------------------------------------------------------------- output folders

def _marker(folder):
    return Path(folder) / RUN_MARKER


def is_project_folder(folder):
    """True when ``folder`` was made by one of the project's scripts (it holds the marker)."""
    return _marker(folder).is_file()


def mark_folder(folder, what):
    """Create ``folder`` (if needed) with the project's marker file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _marker(folder).write_text(json.dumps({"what": what, **run_metadata()}) + "\n")


def check_replaceable(folder, overwrite, hint="pass --overwrite to replace it or choose "
                                              "another --exp_name"):
    """Stop early when ``folder`` holds something that must not be replaced.

    An empty or missing folder is fine; an existing one needs ``overwrite`` and the project's
    marker (anything else is not ours to delete)."""
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not folder.is_dir():
        raise OutputExistsError(f"{folder} exists and is not a folder; {hint}")
    if not overwrite:
        raise OutputExistsError(f"{folder} exists; {hint}")
    if not is_project_folder(folder):
        raise OutputExistsError(f"{folder} exists but was not written by brain-tuning (no "
                                f"{RUN_MARKER} file); it is not replaced: move it away or "
                                "choose another --exp_name / --out")


class FolderLock:
    """A lock file ``.<name>.lock`` beside a folder, held for a run's life.

    A second run of the same folder stops with one line naming the holder; a lock left by a
    process that no longer runs (on this host) is taken over. Within one process the lock is
    re-entrant (a run that holds it may write its outputs through ``output_folder``)."""

    _held = {}  # lock path -> how many holders in this process

    def __init__(self, folder):
        folder = Path(folder)
        self.path = (folder.parent / f".{folder.name}.lock").absolute()
        self.held = False

    def acquire(self):
        if self.path in FolderLock._held:
            FolderLock._held[self.path] += 1
            self.held = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._stale(holder):
                    raise OutputExistsError(
                        f"{self.path.parent / self.path.name[1:-5]} is in use by another run "
                        f"(process {holder.get('pid')} on {holder.get('host')}, started "
                        f"{holder.get('started')}: {holder.get('command')}); wait for it or "
                        f"choose another --exp_name (remove {self.path} if that run is gone)"
                    ) from None
                logger.warning("taking over the lock %s of a run that no longer runs",
                               self.path)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            FolderLock._held[self.path] = 1
            self.held = True
            return self
        raise OutputExistsError(f"{self.path}: could not take the lock; remove it if no run "
                                "uses the folder")

    def _holder(self):
        """Who holds the lock, or None when the file does not say (half-written by a process
        killed while taking it, or not a lock this project wrote): such a lock is taken over."""
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or isinstance(
                holder.get("pid"), bool):
            return None
        return holder

    @staticmethod
    def _stale(holder):
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"]))

    def release(self):
        if self.held:
            FolderLock._held[self.path] -= 1
            if not FolderLock._held[self.path]:
                del FolderLock._held[self.path]
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def output_folder(folder, overwrite=False, what="results"):
    """Write a run's outputs into a fresh folder that replaces ``folder`` when the block ends
    without error.

    Checks first (``check_replaceable``), holds the folder's lock for the block, yields the
    staging folder (marked as the project's) and swaps it in by renames, so that a failed or
    killed run leaves the previous outputs exactly as they were and never mixes files of two
    runs."""
    folder = Path(folder)
    check_replaceable(folder, overwrite)
    with FolderLock(folder):
        recover(folder)
        check_replaceable(folder, overwrite)  # another run may have finished meanwhile
        with atomic_output(folder, overwrite=True) as staging:
            mark_folder(staging, what)
            yield staging


class RunFolder:
    """The folder of a long run (training) that writes as it goes and can be resumed.

    ``check`` stops early on a folder that must not be replaced; ``start`` (called once the
    run has set itself up) moves an old run out of the way and deletes it, then creates the
    folder with the project's marker; ``resume_from`` checks a folder to continue. The lock is
    held from ``check`` (or ``resume_from``) to ``release``."""

    def __init__(self, folder, what="run"):
        self.path = Path(folder)
        self.what = what
        self.lock = FolderLock(self.path)

    def check(self, overwrite):
        check_replaceable(self.path, overwrite, hint="pass --resume to continue that run, "
                          "--overwrite to start it again, or another --exp_name")
        self.lock.acquire()
        recover(self.path)
        return self

    def resume_from(self, state):
        """Lock and repair the folder of a run to resume; returns the path of ``state`` (a
        file inside it, e.g. ``last/training_state.pt``), restoring it after an interrupted
        write."""
        self.lock.acquire()
        recover(self.path)
        recover(self.path / Path(state).parts[0])
        return self.path / state

    def start(self):
        """Replace an old run (only now that the new one has started) and create the folder."""
        aside = None
        if self.path.exists() and any(self.path.iterdir()):
            aside = _temporary(self.path, "old")
            os.replace(self.path, aside)
        mark_folder(self.path, self.what)  # before the delete: recover() must not bring it back
        if aside is not None:
            shutil.rmtree(aside)
        return self.path

    def release(self):
        self.lock.release()


# ----------------------------------------------------------------------------- model choice

def resolve_checkpoint(path):
    """A checkpoint folder; a ``brain_trainer_story.py`` run folder stands for its ``final/``."""
    path = Path(path)
    if not (path / "config.json").exists() and (path / "final" / "config.json").exists():
        return path / "final"
    return path


def tuning_arguments(checkpoint):
    """The trainer's arguments recorded in a tuned checkpoint (``brain_tuning.json``), or None
    for a folder that is no brain-tuning checkpoint (a pretrained model)."""
    try:
        arguments = json.loads((Path(checkpoint) / "brain_tuning.json").read_text())["arguments"]
    except (TypeError, OSError, ValueError, KeyError):
        return None
    return arguments if isinstance(arguments, dict) else None


def models_to_evaluate(model_name, model_paths=(), logs_dir=None, epochs=("final",),
                       skip_pretrained=False):
    """(label, checkpoint) pairs: the pretrained model, then every tuned one.

    Labels are the same whichever flag named a checkpoint (``checkpoint_label``): "pretrained",
    "final", "epoch N", or the folder's name; where two checkpoints would share a label, each
    is prefixed with its run folder's name ("runA/final")."""
    paths = [resolve_checkpoint(path) for path in model_paths]
    if logs_dir:
        for epoch in epochs:
            folder = Path(logs_dir) / (epoch if epoch == "final" else f"checkpoint-epoch{epoch}")
            if not folder.is_dir():
                found = sorted(p.name for p in Path(logs_dir).glob("*")
                               if (p / "config.json").exists())
                raise UsageError(f"{folder}: not found; the run has {', '.join(found) or 'none'}")
            paths.append(folder)
    labels = [checkpoint_label(path) for path in paths]
    labels = [f"{path.resolve().parent.name}/{label}" if labels.count(label) > 1 else label
              for path, label in zip(paths, labels)]
    models = [] if skip_pretrained else [("pretrained", str(model_name))]
    models += [(label, str(path)) for label, path in zip(labels, paths)]
    if not models:
        raise UsageError("nothing to evaluate: give --model_path or --logs_dir, or drop "
                         "--skip_pretrained")
    names = unique_names((label, None) for label, _ in models)
    return [(label, checkpoint) for label, (_, checkpoint) in zip(names, models)]


def checkpoint_label(path):
    """The label of a checkpoint folder: "final", "epoch N" for ``checkpoint-epochN``, else
    the folder's name."""
    name = Path(path).name
    match = re.fullmatch(r"checkpoint-epoch(\d+)", name)
    return f"epoch {match.group(1)}" if match else name


def choose_layers(requested, depth, default=None):
    """Requested hidden-state indices (sorted, unique), or ``default`` clipped to the model's
    depth (all of 0..depth when None)."""
    if requested is None:
        return [layer for layer in (default or range(depth + 1)) if layer <= depth]
    beyond = [layer for layer in requested if not 0 <= layer <= depth]
    if beyond:
        raise UsageError(f"--layers {' '.join(map(str, beyond))}: the model has hidden states "
                         f"0..{depth} only")
    return sorted(set(requested))


# ----------------------------------------------------------------------------- caches

def content_hash(path):
    """SHA-256 of a file's content (hex): of all of it up to ``HASH_WHOLE_BYTES``; of a larger
    file, its size, its first and last ``HASH_BLOCK_BYTES`` and ``HASH_SAMPLED_BLOCKS`` blocks
    spread between them (a replaced WAV or response file differs there). Kept per process for
    the file's inode, size and modification and change times: a copy with its times preserved
    (``cp -p``, ``rsync -a``) still has a new change time, so it is hashed again."""
    stat = os.stat(path)
    key = (str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _CONTENT_HASHES:
        digest_ = hashlib.sha256(str(stat.st_size).encode())
        with open(path, "rb") as handle:
            if stat.st_size <= HASH_WHOLE_BYTES:
                for block in iter(lambda: handle.read(HASH_BLOCK_BYTES), b""):
                    digest_.update(block)
            else:
                last = stat.st_size - HASH_BLOCK_BYTES
                for offset in np.linspace(0, last, HASH_SAMPLED_BLOCKS + 2).astype(np.int64):
                    handle.seek(int(offset))
                    digest_.update(handle.read(HASH_BLOCK_BYTES))
        _CONTENT_HASHES[key] = digest_.hexdigest()
    return _CONTENT_HASHES[key]


def file_identity(paths):
    """Resolved paths and content hashes (``content_hash``) of files, for cache keys and the
    records of what a result was made from: a file replaced at the same path, also by one of
    the same size and time, gives another identity."""
    files = [str(Path(path).resolve()) for path in paths]
    return {"files": files, "sha256": [content_hash(path) for path in files]}


def digest(text):
    """Short SHA-256 hex digest of a string, for cache keys."""
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def cache_path(cache_dir, name, settings, model_key=None):
    """``<cache_dir>[/<model key>]/<name>_<digest of settings>.hf5``.

    ``settings``: a dict (dumped as sorted JSON) of everything the cached values depend on.
    Returns the path and the settings string (stored in the file)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    folder = Path(cache_dir) / model_key[:KEY_CHARS] if model_key else Path(cache_dir)
    return folder / f"{name}_{digest(text)}.hf5", text


def _cache_key(name):
    return f"layer_{name}" if isinstance(name, int) else str(name)


def cached_names(path, names):
    """Those of ``names`` whose arrays ``cached_arrays`` keeps in ``path`` (none when the file
    is missing or unreadable)."""
    try:
        with h5py.File(path, "r") as handle:
            return [name for name in names if _cache_key(name) in handle]
    except (OSError, ValueError):
        return []


def cached_arrays(path, names, compute, settings):
    """Named arrays kept in an HDF5 file, each computed once.

    The names found in ``path`` are read; ``compute(missing_names)`` computes the others and
    returns (dict name -> array, dict name -> extra array stored beside them, e.g. times);
    everything is written back atomically with ``settings`` (a string) as an attribute, and
    names cached earlier but not asked for now are kept. An unreadable file (truncated, zero
    bytes, damaged) is rebuilt with a warning.

    Returns
    -------
    dict name -> array, dict name -> extra array.
    """
    path = Path(path)
    keys = {name: _cache_key(name) for name in names}
    found, extras, readable = {}, {}, False
    if path.exists():
        try:
            with h5py.File(path, "r") as handle:
                found = {name: handle[key][()] for name, key in keys.items() if key in handle}
                extras = {key: handle[key][()] for key in handle if key not in keys.values()
                          and not key.startswith("layer_")}
            readable = True
        except (OSError, KeyError, ValueError) as err:  # truncated, zero bytes, damaged
            logger.warning("cache file %s is unreadable (%s); rebuilding it", path, err)
            found, extras = {}, {}
    missing = [name for name in names if name not in found]
    if missing:
        new, extras = compute(missing)
        found.update(new)
        size = sum(np.asarray(values).nbytes for values in [*extras.values(), *new.values()])
        check_free_space(path, size + (path.stat().st_size if readable else 0))
        with atomic_output(path, overwrite=True) as tmp:
            if readable:
                shutil.copyfile(path, tmp)
            with h5py.File(tmp, "a") as handle:
                arrays = [*extras.items(), *((keys[name], new[name]) for name in missing)]
                for key, values in arrays:
                    if key in handle:
                        del handle[key]
                    handle[key] = values
                handle.attrs["settings"] = settings
    return {name: found[name] for name in names}, extras

"""The paper's protocol on the real data, stage after stage, from one config file.

    python reproduce.py --config configs/iclr2025_wav2vec2-base.json --data_dir /data/ds003020 \\
        --subject 3 --model_name /models/wav2vec2-base --out outputs/reproduce \\
        [--timit /data/timit --speech_commands hf:google/speech_commands --asr finetune] \\
        [--baselines bigslm lm --bigslm_model /models/whisper-medium --lm_model /models/gpt2]
    python reproduce.py ... --dry_run        # print the commands, run nothing

``make reproduce DATA=... MODEL=... SUBJECT=3 [CONFIG=...] [ARGS="--timit ..."]`` runs it;
``make reproduce QUICK=1`` runs it on the built-in synthetic data with the demo's tiny model.
The stages: check the dataset; the subject's noise ceiling (when ``--nc_path``, default
subject_NCs/UTS0N.npy, is missing); brain-tuning (resumed when interrupted); the BigSLM-tuned
and LM-tuned baselines with ``--baselines`` (their target files made once by
target_features.py); brain alignment of the pretrained and tuned models with the low-level
reliance, regions and maps when the dataset has the subject's anatomy, and the semantic
preference with ``--word_vectors``; the downstream probes of the datasets given (and CTC
recognition on TIMIT); the report. Every stage reads its section of ``--config`` (train,
evaluate, probe, asr) and the flags of ``--stage_args``; a stage that fails stops the run with
one line naming it and its command.
"""

import dataclasses
import logging
import shlex
import subprocess
import sys
from pathlib import Path

import arguments
import data_utils
import noise_ceilings
import run_utils
from arguments import flag
from run_utils import UsageError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent
DATASETS = {"timit": ("phonemes", "sentence_type"), "speech_commands": ("words",),
            "crema_d": ("emotion",), "slurp": ("intent",)}
TARGET_KINDS = {"bigslm": "speech", "lm": "text"}
STAGES = ("check", "train", "evaluate", "probe", "asr", "report", *DATASETS,
          *(task for tasks in DATASETS.values() for task in tasks))


@dataclasses.dataclass(kw_only=True)
class Settings(arguments.Flags):
    """The run: the dataset, subject and model, the folder, and what beyond alignment runs."""

    config: str = flag("configs/iclr2025_wav2vec2-base.json", metavar="FILE",
                       help="the settings of every stage (sections train, evaluate, probe, asr) "
                            "and of this script (section reproduce)")
    data_dir: str = flag(help="ds003020 root: the folder holding stimuli/ and derivative/")
    model_name: str = flag(help="the pretrained checkpoint folder or hub id to brain-tune")
    subject: str = flag("1", help="subject: 1, '1' or UTS01")
    out: str = flag("outputs/reproduce", help="folder of the runs, results and report")
    nc_path: str | None = flag(None, help="the subject's noise-ceiling file (default: "
                                          "subject_NCs/UTS0N.npy), made from the test-story "
                                          "repeats when missing")
    regions: str = flag("overlays", choices=("overlays", "annot", "aparc"),
                        help="regions and maps of the best layer when the dataset has the "
                             "subject's pycortex database (derivative/pycortex-db/UTS0N); annot "
                             "needs --fsaverage")
    fsaverage: str | None = flag(None, help="fsaverage folder with label/?h.HCPMMP1.annot: "
                                            "HCP-MMP1 regions and the follow-up's groups")
    word_vectors: str | None = flag(None, help="word vectors (GloVe text format): the semantic "
                                               "preference")
    timit: str | None = flag(None, group="downstream",
                             help="TIMIT: a folder in its distribution layout, or "
                                  "hf:NAME_OR_PATH for a HuggingFace dataset")
    speech_commands: str | None = flag(None, group="downstream",
                                       help="Speech Commands v0.02 (folder or hf:NAME_OR_PATH)")
    crema_d: str | None = flag(None, group="downstream", help="CREMA-D (folder or hf:...)")
    slurp: str | None = flag(None, group="downstream", help="SLURP (folder or hf:...)")
    asr: str = flag("finetune", choices=("finetune", "frozen", "none"), group="downstream",
                    help="with --timit: CTC recognition, the encoder fine-tuned (the paper's) or "
                         "a head on the frozen encoder, or none")
    baselines: list[str] = flag([], choices=tuple(TARGET_KINDS), group="baselines",
                                help="also tune towards a big speech model's layer (bigslm) or a "
                                     "text LM's word states (lm), and evaluate them beside")
    bigslm_model: str | None = flag(None, group="baselines", help="the big speech model")
    bigslm_layer: int | None = flag(None, group="baselines", help="its layer (default: last)")
    lm_model: str | None = flag(None, group="baselines", help="the causal text LM")
    lm_layer: int | None = flag(None, group="baselines", help="its layer (default: last)")
    lm_context_words: int = flag(100, group="baselines", help="words of context per word")
    target_stories: list[str] | None = flag(None, group="baselines",
                                            help="the stories of the target files (default: "
                                                 "every story with responses)")
    stage_args: list[str] = flag([], action="append", metavar="STAGE=ARGS",
                                 help="more flags for one stage, e.g. 'evaluate=--n_bootstrap "
                                      "200' or 'slurp=--hf_split_test devel' (a dataset's "
                                      "probes) or 'intent=--label_column intent'; stages: "
                                      + ", ".join(STAGES) + "; repeat for several")
    dry_run: bool = flag(False, help="print the commands and run nothing")
    log_level: str = flag("INFO", help="logging level")

    def __post_init__(self):
        super().__post_init__()
        for kind in self.baselines:
            if getattr(self, f"{kind}_model") is None:
                raise UsageError(f"--baselines {kind} needs --{kind}_model /path/to/model")
        for item in self.stage_args:
            stage = item.partition("=")[0]
            if stage not in STAGES or "=" not in item:
                raise UsageError(f"--stage_args {item!r}: expected STAGE=ARGS with STAGE one of "
                                 f"{', '.join(STAGES)}")
        if self.regions == "annot" and self.fsaverage is None:
            raise UsageError("--regions annot needs --fsaverage")

    def extra(self, *stages):
        """The flags ``--stage_args`` gives these stages, in order."""
        return [token for item in self.stage_args for stage in stages
                if item.partition("=")[0] == stage
                for token in shlex.split(item.partition("=")[2])]


def parse_args(argv=None):
    return arguments.parse(Settings, argv, section="reproduce", docs="docs/reproduce.md",
                           description=__doc__.split("\n\n")[0])


def script(name, *args):
    """The command that runs one of the toolkit's scripts with this interpreter."""
    return [sys.executable, str(ROOT / name), *map(str, args)]


def data_source(value):
    """--data_path FOLDER, or --hf_dataset NAME_OR_PATH for ``hf:NAME_OR_PATH``."""
    if value.startswith("hf:"):
        return ["--hf_dataset", value[3:]]
    return ["--data_path", value]


def plan(settings):
    """The stages' commands in order: [(stage, command)], given what is on disk (a ceiling or
    target file that is there is not made again; an interrupted run is resumed)."""
    subject = data_utils.subject_id(settings.subject)
    out, model = Path(settings.out), settings.model_name
    run = f"{Path(model.rstrip('/')).name}_{subject}"
    runs = out / "runs"
    ceiling = noise_ceilings.ceiling_file(subject, settings.nc_path)
    common = ["--config", settings.config, "--subject", settings.subject, "--data_dir",
              settings.data_dir, *(["--nc_path", ceiling] if settings.nc_path else [])]
    stages = [("check", script("data_utils.py", "check", "--data_dir", settings.data_dir,
                               "--subjects", settings.subject, *settings.extra("check")))]
    if not ceiling.exists():
        stages.append(("ceiling", script("noise_ceilings.py", "--data_dir", settings.data_dir,
                                         "--subject", settings.subject, "--out", ceiling)))
    tuned = [("train", run, [])]
    for kind in settings.baselines:
        target = out / "targets" / f"{kind}_{Path(getattr(settings, kind + '_model')).name}.hf5"
        if not target.exists():
            stages.append((f"{kind} targets", target_command(settings, kind, target)))
        tuned.append((f"{kind} baseline", f"{run}_{kind}", ["--target_features", target]))
    for stage, name, extra in tuned:
        resume = ["--resume"] if (runs / name / "last").exists() else []
        stages.append((stage, script("brain_trainer_story.py", *common, "--model_name", model,
                                     "--save_dir", runs, "--exp_name", name, *extra, *resume,
                                     *settings.extra("train"))))
    stages.append(("evaluate", evaluate_command(settings, common, subject, run)))
    downstream = probe_commands(settings, run)
    stages += [(stage, command) for stage, command, _ in downstream]
    stages.append(("report", script(
        "report.py", "--out", out, "--title", f"brain-tuning of {run}", "--alignment",
        out / "alignment" / run, "--overwrite",
        *(["--downstream", *(out / "downstream" / name for _, _, name in downstream)]
          if downstream else []), *settings.extra("report"))))
    return stages


def target_command(settings, kind, target):
    """target_features.py's command for a baseline's target file."""
    layer, model = getattr(settings, f"{kind}_layer"), getattr(settings, f"{kind}_model")
    return script("target_features.py", TARGET_KINDS[kind], "--model_name", model, "--data_dir",
                  settings.data_dir, "--out", target,
                  *(["--layer", layer] if layer is not None else []),
                  *(["--context_words", settings.lm_context_words] if kind == "lm" else []),
                  *(["--stories", *settings.target_stories] if settings.target_stories else []))


def evaluate_command(settings, common, subject, run):
    """brain_evaluate.py's command: the pretrained and tuned models (and the baselines), with
    regions and maps where the dataset has the subject's anatomy."""
    out = Path(settings.out)
    anatomy = Path(settings.data_dir) / "derivative" / "pycortex-db" / subject / "transforms"
    regions = (["--regions", settings.regions, "--flatmap_layers", "best",
                *(["--fsaverage", settings.fsaverage] if settings.regions == "annot" else [])]
               if anatomy.is_dir() else [])
    partial = out / "alignment" / f".{run}.partial"
    return script("brain_evaluate.py", *common, "--model_name", settings.model_name,
                  "--logs_dir", out / "runs" / run, "--epochs", "final", "--save_dir",
                  out / "alignment", "--exp_name", run, "--overwrite",
                  *(["--resume"] if partial.exists() else []),
                  *(token for kind in settings.baselines
                    for token in ("--model_path", out / "runs" / f"{run}_{kind}")),
                  *regions,
                  *(["--semantic_preference", "--word_vectors", settings.word_vectors]
                    if settings.word_vectors else []),
                  *settings.extra("evaluate"))


def probe_commands(settings, run):
    """[(stage, command, results folder name)] of the probes of the datasets given and of CTC
    recognition on TIMIT."""
    out = Path(settings.out)
    models = ["--config", settings.config, "--model_name", settings.model_name, "--model_path",
              out / "runs" / run, "--save_dir", out / "downstream", "--overwrite"]
    commands = []
    for dataset, tasks in DATASETS.items():
        source = getattr(settings, dataset)
        if source is None:
            continue
        for task in tasks:
            name = f"{run}_{task}"
            commands.append((task, script(f"eval_{task}.py", *data_source(source),
                                          *settings.extra("probe", dataset, task), *models,
                                          "--exp_name", name), name))
    if settings.timit is not None and settings.asr != "none":
        finetune = settings.asr == "finetune"
        name = f"{run}_asr_finetune" if finetune else f"{run}_asr"
        commands.append(("asr", script("eval_asr.py", *data_source(settings.timit),
                                       *settings.extra("timit", "asr"),
                                       *(["--finetune"] if finetune else []), *models,
                                       "--exp_name", name), name))
    return commands


def run(settings):
    """Run (or with --dry_run print) every stage; a failed stage stops the run in one line."""
    stages = plan(settings)
    if settings.dry_run:
        for stage, command in stages:
            print(f"# {stage}\n{shlex.join(map(str, command))}")
        return
    for number, (stage, command) in enumerate(stages, 1):
        logger.info("stage %d/%d, %s: %s", number, len(stages), stage,
                    shlex.join(map(str, command)))
        done = subprocess.run([str(part) for part in command])
        if done.returncode:
            raise run_utils.UserError(f"stage {stage} failed (exit status {done.returncode}; "
                                      f"its error is above): {shlex.join(map(str, command))}")
    logger.info("done: %s", Path(settings.out) / "report.md")


def main(argv=None):
    return run_utils.main(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())

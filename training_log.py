"""Training curves where people look at them: a brain-tuning run's loss and learning rates per
optimiser step, and its losses and validation correlation per epoch, as TensorBoard event
files in ``<run>/tensorboard/`` (``--report_to tensorboard``; the tags HuggingFace's Trainer
uses: ``train/loss``, ``train/learning_rate``, ``eval/loss``), beside ``metrics.jsonl``.
"""

import importlib.util

from run_utils import UsageError

REPORT_TO = ("none", "tensorboard")  # --report_to
EVENTS_FOLDER = "tensorboard"  # in the run folder


def check_report_to(report_to):
    """A UsageError when ``report_to`` needs a package that is not installed."""
    if report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise UsageError("--report_to tensorboard needs the tensorboard package: pip install "
                         "tensorboard (or --report_to none)")


class TrainingLog:
    """Where the run's curves go: nowhere (``report_to`` "none", or not the main process) or a
    TensorBoard ``SummaryWriter`` of ``run_dir``/``EVENTS_FOLDER`` (a resumed run adds an
    event file; its steps go on from where the run stopped)."""

    def __init__(self, run_dir, report_to, main_process=True):
        self.writer = None
        if report_to == "tensorboard" and main_process:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / EVENTS_FOLDER))

    def step(self, step, loss, learning_rates):
        """One optimiser step (0-based over the run): its training loss and the learning rates
        of the encoder and of the head."""
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/learning_rate", learning_rates[0], step)
            self.writer.add_scalar("train/learning_rate_head", learning_rates[1], step)

    def epoch(self, line):
        """An epoch's ``metrics.jsonl`` line, at its (1-based) epoch."""
        if self.writer is not None:
            epoch = line["epoch"]
            self.writer.add_scalar("train/epoch_loss", line["train_loss"], epoch)
            self.writer.add_scalar("eval/loss", line["val_loss"], epoch)
            self.writer.add_scalar("eval/correlation", line["val_corr"], epoch)
            self.writer.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            self.writer.close()

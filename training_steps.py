"""The optimisation of brain-tuning: Adam over the encoder and the head with their per-epoch
schedules, one epoch of optimiser steps, the validation loss and correlation, and the stop on a
diverged loss (docs/method.md#brain-tuning).
"""

import dataclasses
import math
import time

import numpy as np

import arguments
import eval_utils
import run_utils
from arguments import flag
from run_utils import UsageError
from training_data import BATCH_ORDERS

# loaded on first use, so that --help and argument errors appear at once
torch = run_utils.LazyModule("torch")

# --select_by -> the epoch it keeps
SELECT_BY = {"loss": "lowest validation loss", "corr": "highest validation correlation"}


@dataclasses.dataclass(kw_only=True)
class TrainingFlags(arguments.Flags):
    """Batches, learning rates, schedules and early stopping."""

    num_epochs: int = flag(30, group="training", help="maximum number of epochs")
    batch_size: int = flag(128, group="training", help="samples per optimiser step")
    micro_batch_size: int | None = flag(None, group="training",
                                        help="samples per forward pass (gradients accumulate up "
                                             "to --batch_size); default: --batch_size")
    base_lr: float = flag(5e-5, group="training", help="encoder learning rate")
    linear_layer_lr: float = flag(1e-4, group="training", help="head learning rate")
    warmup_epochs: int = flag(5, group="training",
                              help="encoder lr rises linearly from 0 over these epochs, then "
                                   "falls linearly to 0 at --num_epochs")
    head_lr_decay: float = flag(0.8, group="training",
                                help="head lr factor per epoch (lr * decay**epoch)")
    head_lr_floor: float = flag(0.1, group="training", help="lowest head lr factor")
    select_by: str = flag("loss", choices=tuple(SELECT_BY), group="training", protocol=True,
                          help="the epoch final/ keeps, and what --patience waits for: loss, the "
                               "lowest validation loss (the paper's); corr, the highest mean "
                               "validation correlation")
    patience: int = flag(5, group="training",
                         help="stop after this many epochs without a better validation score "
                              "(--select_by) (0: never stop early)")
    batch_order: str = flag(BATCH_ORDERS[0], choices=BATCH_ORDERS, group="training",
                            protocol=True,
                            help="samples of a step: shuffled (a permutation per epoch from "
                                 "--seed and the epoch) or consecutive (the authors': each "
                                 "story's TRs in order); docs/method.md#where-our-defaults-"
                                 "differ-from-the-authors-code")
    seed: int = flag(0, group="training", help="random seed")

    def __post_init__(self):
        super().__post_init__()
        arguments.check_at_least(self, 1, "num_epochs", "batch_size", "micro_batch_size")
        arguments.check_at_least(self, 0, "warmup_epochs", "patience", "seed", "base_lr",
                                 "linear_layer_lr")
        if not 0 < self.head_lr_decay <= 1:
            raise UsageError(f"--head_lr_decay must be in (0, 1], got {self.head_lr_decay}")
        if not 0 <= self.head_lr_floor <= 1:
            raise UsageError(f"--head_lr_floor must be in [0, 1], got {self.head_lr_floor}")
        if self.micro_batch_size is None:
            self.micro_batch_size = self.batch_size
        elif self.micro_batch_size > self.batch_size:
            raise UsageError(f"--micro_batch_size {self.micro_batch_size} is larger than "
                             f"--batch_size {self.batch_size}")


def backbone_lr_factor(epoch, num_epochs, warmup_epochs):
    """Linear warm-up from 0 over ``warmup_epochs``, then linear decay to 0 at ``num_epochs``."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    return max(0.0, (num_epochs - epoch) / max(1, num_epochs - warmup_epochs))


def head_lr_factor(epoch, decay, floor):
    """``decay ** epoch``, never below ``floor``."""
    return max(decay ** epoch, floor)



def make_optimizer(model, base_lr, head_lr, num_epochs, warmup_epochs, head_lr_decay,
                   head_lr_floor):
    """Adam over the trainable encoder weights and the head, with their per-epoch schedules
    (``backbone_lr_factor``, ``head_lr_factor``)."""
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": backbone_params, "lr": base_lr},
                                  {"params": list(model.head.parameters()), "lr": head_lr}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [
        lambda e: backbone_lr_factor(e, num_epochs, warmup_epochs),
        lambda e: head_lr_factor(e, head_lr_decay, head_lr_floor)])
    return optimizer, scheduler



def validate(model, loader, device, dtype):
    """Validation loss (MSE) and mean voxel correlation, in eval mode."""
    model.eval()
    predictions, targets, total, count = [], [], 0.0, 0
    with torch.inference_mode():
        for inputs, target, offset in loader:
            inputs, target = inputs.to(device), target.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                output = model(inputs)
            output = output.float()[:, offset:offset + target.shape[1]]
            total += torch.nn.functional.mse_loss(output, target, reduction="sum").item()
            count += target.numel()
            predictions.append(output.cpu().numpy())
            targets.append(target.cpu().numpy())
    correlation = eval_utils.column_correlation(np.concatenate(predictions),
                                                np.concatenate(targets))
    return total / count, float(correlation.mean())



def train_one_epoch(network, model, batches, val_loaders, optimizer, scheduler, scaler, dtype,
                    processes, epoch, num_epochs, log=None):
    """One epoch: an optimiser step per item of ``batches`` (its micro-batches' gradients
    summed; each step's loss and learning rates to ``log``, a ``training_log.TrainingLog``),
    the schedules' step, then the validation loss and correlation (of rank 0, on every
    rank). Returns the epoch's metrics line."""
    began = time.time()
    device = processes.device
    lrs = [group["lr"] for group in optimizer.param_groups]
    network.train()
    total, count = 0.0, 0
    progress = run_utils.progress(batches, desc=f"epoch {epoch + 1}/{num_epochs}",
                                  disable=not processes.is_main)
    for index, micro_batches in enumerate(progress):
        optimizer.zero_grad(set_to_none=True)
        n_samples = sum(len(b[1]) for b in micro_batches)
        step_total = 0.0
        for inputs, target, offset in micro_batches:
            inputs, target = inputs.to(device), target.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                output = network(inputs)
            loss = torch.nn.functional.mse_loss(
                output.float()[:, offset:offset + target.shape[1]], target)
            scaler.scale(loss * len(target) / n_samples).backward()
            step_total += loss.item() * len(target)
        total += step_total
        count += n_samples
        scaler.step(optimizer)
        scaler.update()
        if log is not None:
            log.step(epoch * len(batches) + index, step_total / n_samples, lrs)
        progress.set_postfix(loss=f"{total / count:.4f}")
    scheduler.step()
    if processes.distributed:
        sums = torch.tensor([total, count], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, count = sums.tolist()
    val_loss, val_corr = np.mean([validate(model, loader, device, dtype)
                                  for loader in val_loaders], axis=0)
    if processes.distributed:  # every rank takes rank 0's numbers, so they stop at the same epoch
        shared = torch.tensor([val_loss, val_corr], dtype=torch.float64, device=device)
        torch.distributed.broadcast(shared, src=0)
        val_loss, val_corr = shared.tolist()
    return {"epoch": epoch + 1, "train_loss": total / max(count, 1),
            "val_loss": float(val_loss), "val_corr": float(val_corr),
            "lr_backbone": lrs[0], "lr_head": lrs[1], "seconds": time.time() - began}



def check_finite(line):
    """Stop, before the epoch is saved, when its losses are not finite (training diverged):
    nothing of a diverged epoch becomes a checkpoint or ``final/``."""
    bad = [key for key in ("train_loss", "val_loss") if not math.isfinite(line[key])]
    if bad:
        raise run_utils.UserError(
            f"epoch {line['epoch']}: {', '.join(f'{k} {line[k]}' for k in bad)}: training "
            "diverged; lower --base_lr/--linear_layer_lr, use --precision fp32 or check the "
            "targets for NaN (the checkpoints of earlier epochs are kept)")


"""train_population: P independent runs (any mix of method, seed and learning rate) trained as one
batched computation, from a config to its runs and curves tables.

Each SGD step gathers one batch per data order (members with one seed share an order, hence every
batch), steps every member of the stacked model (soap.population.model) with its own learning rate,
then refreshes the members' feedback. Losses are smoothed and checked for divergence at log points;
validation and alignment are logged at eval points.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from soap.config import ConfigError, TrainConfig
from soap.data import Splits, load_dataset, load_prepared
from soap.devices import describe, device_record, matmul_precision, resolve_device
from soap.models import BLOCK_OUTPUTS, INPUT_SIZE, MNIST_SIZE
from soap.population.orders import by_data_order, epoch_orders
from soap.population.placement import population_model
from soap.population.records import TrainResult, curves_table, meta_record, run_id, runs_table
from soap.rules import refresh_due
from soap.step_graph import StepGraph

log = logging.getLogger(__name__)


def load_splits(config: TrainConfig) -> Splits:
    if config.prepared:
        return load_prepared(config.prepared)
    return load_dataset(config.dataset, config.data_root, download=config.download,
                        val_size=config.val_size, split_seed=config.split_seed)


def train_population(config: TrainConfig, data: Splits | None = None, progress: bool = True,
                     capture: bool | str | None = None) -> TrainResult:
    """Train every member of `config.population()` together; return the runs and curves tables (runs
    in the config's order). Products run at `config.matmul_precision`.

    capture: `config.capture` unless given (auto, True, False): replay each SGD step from a CUDA graph
    on CUDA, so a large population is not bound by kernel launches (soap.step_graph; elsewhere the
    step runs with a graph's constraints, no faster).
    """
    with matmul_precision(config.matmul_precision):
        return _train(config, data, progress, config.capture if capture is None else capture)


def step_capture(setting: bool | str, device: torch.device, capturable: bool) -> bool:
    """Whether the step is captured: `setting` auto (on for a CUDA population that can be), True or False."""
    if setting == "auto":
        return device.type == "cuda" and capturable
    if setting is True and not capturable:
        raise ConfigError("capture: true, but so_ members change their step's computation after the warm-up, "
                          "which a replayed graph cannot; use capture: auto or false")
    return bool(setting)


def _train(config: TrainConfig, data: Splits | None, progress: bool, capture: bool | str) -> TrainResult:
    started, wall_start = datetime.now(timezone.utc), time.perf_counter()
    device = resolve_device(config.device)
    data = (data or load_splits(config)).to(device)
    configured = config.population()
    placement = by_data_order(configured)  # the model's member i is configured[placement[i]]
    members = [configured[i] for i in placement]
    pop, batch = len(members), config.batch_size
    sizes = network_sizes(config, data.input_dim, data.num_classes)
    model = population_model(sizes, members, config.network_activation(), device, config.architecture,
                             optimizer=config.optimizer, decay=config.kp_decay, second_order=config.second_order(),
                             weight_decay=config.weight_decay, **_hyperparameters(config))
    lr = torch.tensor([m.lr for m in members], device=device, dtype=torch.float32)  # (pop,)
    periods = np.array([m.refresh_period for m in members])  # (pop,)
    divergence_loss = config.divergence_factor * math.log(data.num_classes)

    n_train = len(data.train_y)
    steps_per_epoch = n_train // batch  # the last partial batch is dropped: every step has `batch` examples
    total_steps = int(config.epochs * n_train) // batch
    if total_steps < 1:
        raise ConfigError(f"epochs={config.epochs} gives no full batch of {batch} from {n_train} examples")
    groups = len(model.group_seeds)
    orders = epoch_orders(model.group_seeds, n_train, device)
    index = torch.empty(groups, batch, dtype=torch.long, device=device)  # the step's examples, per data order
    eval_x, eval_y = data.val_x[:config.eval_subset], data.val_y[:config.eval_subset]

    alive = torch.ones(pop, dtype=torch.bool, device=device)
    diverged_at = np.full(pop, np.nan)
    ema: Tensor | None = None  # smoothed training loss (pop,), from the first step's loss on
    train_log: list[tuple[int, Tensor, Tensor]] = []  # (examples, loss (pop,), ema (pop,)) on device
    eval_log: list[tuple[int, dict[str, Tensor]]] = []  # (examples, {column: (pop,)}) on the host

    def log_eval(examples: int, x: Tensor, y: Tensor, full: bool = False) -> None:
        val_loss, val_acc = model.evaluate(data.val_x, data.val_y) if full else model.evaluate(eval_x, eval_y)
        row = {"val_loss": val_loss, "val_acc": val_acc, **model.alignment(x, y)}
        host = torch.where(alive, torch.stack(list(row.values())), math.nan).cpu()  # one read, not one a column
        eval_log.append((examples, dict(zip(row, host))))

    def gather(index: Tensor) -> tuple[Tensor, Tensor]:
        """One batch per data order: x (groups, batch, in), y (groups, batch)."""
        flat = index.flatten()  # index_select: ~3x faster than advanced indexing on CPU
        return (data.train_x.index_select(0, flat).view(groups, batch, -1),
                data.train_y.index_select(0, flat).view(groups, batch))

    def sgd_step(index: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, y = gather(index)
        return x, y, model.train_step(x, y, lr)  # the loss (pop,) is from before the step

    # Everything the step reads is updated in place (index, lr, parameters), as a CUDA graph requires.
    run_step = StepGraph(sgd_step, index, lr, enabled=step_capture(capture, device, model.capturable))

    bar = tqdm(total=total_steps * batch * pop, unit="ex", unit_scale=True, disable=not progress,
               desc=f"{config.dataset} {config.phase} x{pop}", mininterval=1.0 if sys.stderr.isatty() else 30.0,
               file=sys.stderr, dynamic_ncols=True)
    seen, loop_start, loop_cpu_start = 0, time.perf_counter(), time.process_time()
    for step in range(total_steps):
        offset = step % steps_per_epoch
        if offset == 0:
            order = next(orders)  # (groups, n_train)
        index.copy_(order[:, offset * batch:(offset + 1) * batch])
        if step == 0:
            log_eval(0, *gather(index))
        x, y, loss = run_step()  # outputs are overwritten by the next step (a graph's fixed buffers)

        before, seen = seen, seen + batch
        model.refresh(refresh_due(before, seen, periods))
        # NaN stays NaN: a member whose loss was ever non-finite is caught at the next log point
        ema = loss.clone() if ema is None else ema.mul_(config.ema_beta).add_(loss, alpha=1 - config.ema_beta)

        if refresh_due(before, seen, config.log_every) or step == total_steps - 1:
            # the bookkeeping stays on the device; the one read a log point makes is which members
            # diverged, since freezing them needs their indices
            bad = alive & ~(torch.isfinite(ema) & (ema < divergence_loss))
            alive &= ~bad
            lr.masked_fill_(~alive, 0.0)
            train_log.append((seen, torch.where(alive, loss, math.nan), torch.where(alive, ema, math.nan)))
            newly = np.flatnonzero(bad.cpu().numpy())
            if newly.size:
                diverged_at[newly] = seen
                model.freeze(torch.as_tensor(newly, device=device))
                log.warning("diverged at %d examples: %s", seen, [run_id(config, members[i]) for i in newly])
        if refresh_due(before, seen, config.eval_every) and step < total_steps - 1:
            log_eval(seen, x, y)
        bar.update(batch * pop)
    bar.close()
    loop_time, loop_cpu = time.perf_counter() - loop_start, time.process_time() - loop_cpu_start

    log_eval(seen, x, y, full=True)  # the curves' last point is the whole validation set
    val_loss, val_acc = eval_log[-1][1]["val_loss"], eval_log[-1][1]["val_acc"]
    test_loss, test_acc = model.evaluate(data.test_x, data.test_y)
    curves = curves_table(config, members, train_log, eval_log)
    finals = {"final_train_loss": ema, "val_loss": val_loss, "val_acc": val_acc,
              "test_loss": test_loss, "test_acc": test_acc}
    finals = {k: torch.where(alive.cpu(), v.cpu(), math.nan).numpy() for k, v in finals.items()}
    runs = runs_table(config, members, sizes, finals, diverged_at, seen, eval_log, curves)
    runs = runs.iloc[np.argsort(placement)].reset_index(drop=True)  # back to the config's order
    wall = time.perf_counter() - wall_start
    meta = meta_record(config, describe(device), started.isoformat(), datetime.now(timezone.utc).isoformat(),
                       wall, loop_time, loop_cpu, pop, seen, device_record(device))
    return TrainResult(runs, curves, meta)


def network_sizes(config: TrainConfig, input_dim: int, num_classes: int) -> list[int]:
    """Each weight layer's input size, flattened, then the classes: the MLP's widths, or LeNet-5's on
    28x28 images padded to 32x32 (soap.models.pad_to_32 refuses other sizes)."""
    if config.architecture == "lenet5":
        return [input_dim // MNIST_SIZE**2 * INPUT_SIZE**2, *BLOCK_OUTPUTS, num_classes]
    return [input_dim, *config.hidden, num_classes]


def _hyperparameters(config: TrainConfig) -> dict:
    return {"momentum": {"momentum": config.momentum},
            "adam": {"betas": tuple(config.adam_betas), "eps": config.adam_eps}}.get(config.optimizer, {})

"""The training loop shared by every variant.

SAELens's SAETrainer does the optimizer step, LR schedule (warm-up + linear decay), coefficient
warm-up (L1), gradient clipping and dead-feature bookkeeping (with `--optimizer=signum` its Adam and
schedule are swapped for schedule-free sign-SGD, below); we drive it one `step()` at a time
from our own buffer (its `fit()` wants a plain tensor iterator and logs only to wandb). Added here,
because SAELens does not do them: the decoder rows are kept at unit norm (gradient projected onto
the tangent space, rows renormalized after every step), b_dec starts at the data mean, the variant
is handed the batch's provenance and true neighbours (StepData, below), metrics are logged to
memory every `log_every` steps, and the final numbers are averaged over the last steps instead of
read off one batch.

The variant contract: before each step the trainer calls `sae.begin_step(StepData(...))` on SAEs
that define it (the seed variants, trainers/variant_sae.py). StepData is everything a variant may
use from the trainer: the batch with its provenance, the step number, true neighbours, the domain
tags of the rows' documents, and activations of extra texts normalized like the training rows.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import torch
from sae_lens.config import SAETrainerConfig
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from trainers import distributed
from trainers.buffer import ActivationBatch, ActivationBuffer
from trainers.model import text_activations


class TrainingFailed(RuntimeError):
    """Training produced something that is not a result (NaN loss, no steps)."""


@dataclass
class TrainSettings:
    """The training section of a run's config (each field is a flag: --n_tokens=600000)."""

    n_tokens: int = 300_000  # training tokens (BOS excluded)
    batch_size: int = 256
    optimizer: str = "adam"  # or "signum": schedule-free sign-SGD (OPTIMIZERS below)
    lr: float = 0.0  # 0: the optimizer's rule, which scales with d_sae (OPTIMIZERS); recorded as training.lr
    lr_warm_up_frac: float = 0.02  # adam only: schedule-free needs no schedule
    lr_decay_frac: float = 0.2  # adam only
    encoder_init_norm: float = 1.0  # each encoder row's norm at the start (its direction is the decoder row's,
    # SAELens's tied init); sparsify's nn.Linear init gives about 0.58, which sets sign-SGD's relative step
    dead_window_tokens: int = 100_000  # a feature that fired on none of the last this-many tokens is dead (AuxK
    # acts on it); capped at a quarter of the run, so that runs of any length can see dead features
    log_every: int = 20
    final_avg_frac: float = 0.05  # final metrics = mean over this last fraction of steps
    seqs_per_fill: int = 128  # buffer: sequences per refill (the buffer holds two fills)
    model_batch_size: int = 16  # sequences per LM forward pass
    seed: int = 0

    @property
    def n_steps(self) -> int:
        return self.n_tokens // self.batch_size

    def sequences_needed(self, context_size: int) -> int:
        """Training sequences to build so that no row is served twice when the corpus allows: the
        buffer reads whole fills and keeps up to two of them resident beyond what it has served."""
        return math.ceil(self.n_tokens / (context_size - 1)) + 2 * self.seqs_per_fill

    @property
    def dead_window_steps(self) -> int:
        return max(1, min(self.dead_window_tokens // self.batch_size, self.n_steps // 4))


# optimizer -> its learning rate at d_sae 16384, scaled by sqrt(16384 / d_sae) (sparsify's rules: wider SAEs
# take smaller steps). Adam's 8e-4 gives 1.6e-3 at d_sae 4096, 4x the previous default (2e-4: 4e-4 at 4096),
# measured by quality_benchmark.py on the embedded default (seed 0; README, quality per token): TopK k 48,
# EV / CE-loss score at 100k tokens 0.9150 / 0.8329 at 4e-4 -> 0.9448 / 0.9242 (3.2e-3: 0.9481 / 0.9246), at
# 300k 0.9496 / 0.9301 -> 0.9620 / 0.9495 (3.2e-3: 0.9640 / 0.9427); ReLU + L1 at 300k, at matched L0 ~37,
# 4e-4 ~0.911 / ~0.866 (interpolated) -> 0.9385 / 0.9183. Not measured beyond 300k tokens.
# A variant module may set its own (its LEARNING_RATES, {optimizer: rate at d_sae 16384}) where it measured one.
OPTIMIZERS = {"adam": 8e-4, "signum": 5e-3}


def learning_rate(settings: TrainSettings, d_sae: int, rates: dict[str, float] | None = None) -> float:
    """The learning rate a training uses: --lr when given, else its optimizer's rule at this d_sae, from
    `rates` (a variant's LEARNING_RATES) where it names the optimizer, else from OPTIMIZERS."""
    return settings.lr or {**OPTIMIZERS, **(rates or {})}[settings.optimizer] * math.sqrt(16384 / d_sae)


class SignSGD(torch.optim.Optimizer):
    """p -= lr * sign(grad): steepest descent in the L-infinity norm (Bernstein et al. 2018). Written here
    because neither torch nor schedulefree ships it; schedule-free's wrapper adds the momentum (signum)."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


def use_schedule_free_signum(trainer: SAETrainer, lr: float, activation_scale: float) -> None:
    """Replace SAELens's Adam and LR schedule by schedule-free sign-SGD with momentum 0.95 (the
    `schedulefree` package's wrapper, as EleutherAI's sparsify trains), at a constant rate. The wrapper
    trains at its interpolated point y and keeps the average x for evaluation: `eval_weights` swaps x in.

    Sign-SGD's steps are absolute. The weights' scale does not depend on the activations' (features are
    in activation units on both sides of a unit-norm decoder), but the biases live in activation units,
    and the harness trains on activations multiplied by `activation_scale` (E||x|| = sqrt(d_model)). So the
    biases step lr x activation_scale: lr in the model's own units, as sparsify's do (it trains on raw
    activations). Measured (quality_benchmark, 100k tokens, TopK k=48, AuxK off): with the biases at lr
    61% of the features died and the CE-loss score was 0.835; at lr x scale none died and it was 0.899."""
    from schedulefree import ScheduleFreeWrapper

    weights, biases = [], []  # the SAE's own biases; a variant's heads and probes step at lr like the weights
    for name, p in trainer.sae.named_parameters():
        (biases if name in ("b_enc", "b_dec") else weights).append(p)
    opt = ScheduleFreeWrapper(SignSGD([{"params": weights, "lr": lr}, {"params": biases, "lr": lr * activation_scale}], lr=lr),
                              momentum=0.95)
    opt.train()  # no state yet: it only marks the parameters as y, where gradients are taken
    trainer.optimizer = opt
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt.base, lambda _: 1.0)  # SAELens steps and saves it


@dataclass
class TrainResult:
    n_steps: int
    n_tokens: int
    wall_time_s: float
    tokens_per_s: float
    model_tokens: int  # tokens run through the LM (BOS included)
    epochs_started: int
    curves: dict[str, list[float]] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    activation_scale: float = 1.0
    flags: list[dict] = field(default_factory=list)  # degenerate stretches flagged during training (Flags)
    lr: float = 0.0  # the learning rate used (learning_rate)
    optimizer: str = "adam"
    failed: str | None = None  # why training stopped early (a non-finite loss or gradient), else None


@dataclass
class StepData:
    """What a variant may use from the trainer, handed to it before each step (`begin_step`)."""

    batch: ActivationBatch  # this step's rows and their provenance (sequence, position, document)
    step: int  # optimizer steps taken before this one
    source: ActivationBuffer
    hook_index: int = 0

    def neighbours(self, offset: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """(acts [B, d] fp32, valid [B]): each row's activation `offset` positions away in the same
        document; invalid outside the sequence, on BOS, in another document packed into the same
        sequence, or where the row's storage was recycled."""
        acts, valid = self.source.neighbours(self.batch, offset)
        return acts[:, self.hook_index].float().contiguous(), valid

    def has_topic(self, topic: str) -> torch.Tensor:
        """[B] bool: whether each row's document carries `topic` (its domain tag)."""
        return self.source.has_topic(self.batch, topic)

    @property
    def held_out_percent(self) -> int:
        """The document split of this run: extra texts a variant uses must come from the other side."""
        return self.source.sequences.held_out_percent

    def topics(self) -> set[str]:
        """The topics of the training documents."""
        return {d.topic for d in self.source.sequences.documents}

    def text_activations(self, texts: list[str], n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(acts [n, n_tokens, d], mask [n, n_tokens]) of extra texts, normalized like the training
        rows and on their device (labelled pools: the adversarial probe, translation pairs)."""
        src = self.source
        acts, mask = text_activations(src.model, src.hook_names[self.hook_index], texts, n_tokens,
                                      src.model_batch_size)
        return (acts * float(src.scale[self.hook_index])).to(src.device), mask.to(src.device)


class NonFiniteTraining(TrainingFailed):
    """A loss term or a gradient stopped being finite (the step and the term are in the message)."""


def check_finite(step: int, losses: dict, sae) -> None:
    """Stop at the first step whose loss, one of its terms (`losses`: name -> number), or the update (a
    non-finite gradient makes the parameters non-finite) is not finite, naming it."""
    for name, value in losses.items():
        if not math.isfinite(value):
            raise NonFiniteTraining(f"step {step + 1}: the loss term {name} is {value}; lower --lr "
                                    "or the variant's coefficients")
    bad = [name for name, p in sae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteTraining(f"step {step + 1}: a gradient was not finite (after the update {', '.join(bad)} "
                                "hold non-finite values) although the loss was; lower --lr")


class Flags:
    """Degenerate training, flagged as it happens (a line in the log) when it lasts: L0 at 0 (every
    feature silent), L0 above half of d_sae (no sparsity), more than 90% of features dead. Sustained =
    over a tenth of the run (at least one logging interval). The final gate (experiment.py) fails a run
    whose final numbers are degenerate; these lines say when it started."""

    def __init__(self, n_steps: int, log_every: int, d_sae: int):
        self.window, self.d_sae = max(log_every, n_steps // 10), d_sae
        self.since: dict[str, int] = {}  # condition -> first logged step of its current stretch
        self.flagged: list[dict] = []  # every stretch flagged: condition, from step, flagged at step

    def update(self, step: int, logged: dict) -> None:
        conditions = {"L0 is 0 (every feature silent)": logged["l0"] == 0,
                      f"L0 is above half of d_sae ({self.d_sae // 2}): no sparsity": logged["l0"] > self.d_sae / 2,
                      "more than 90% of features are dead": logged["dead_frac"] > 0.9}
        for name, holds in conditions.items():
            if not holds:
                self.since.pop(name, None)
                continue
            start = self.since.setdefault(name, step)
            if step - start >= self.window and not any(f["condition"] == name and f["from_step"] == start + 1
                                                       for f in self.flagged):
                self.flagged.append({"condition": name, "from_step": start + 1, "flagged_at_step": step + 1})
                tqdm.write(f"[guard] step {step + 1}: {name}, since step {start + 1} (L0 {logged['l0']:.1f}, dead "
                           f"{logged['dead_frac']:.0%}); unless it recovers the run will be marked failed", file=sys.stderr)


def constrain_decoder(sae) -> None:
    """Keep W_dec rows at unit norm: project each row's gradient onto the sphere's tangent space,
    and renormalize after the optimizer step (see `renormalize_decoder`)."""

    def project(grad: torch.Tensor) -> torch.Tensor:
        w = sae.W_dec.detach()
        w_unit = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return grad - (grad * w_unit).sum(-1, keepdim=True) * w_unit

    sae.W_dec.register_hook(project)


@torch.no_grad()
def renormalize_decoder(sae) -> None:
    sae.W_dec.data /= sae.W_dec.data.norm(dim=-1, keepdim=True).clamp_min(1e-8)


class Training:
    """One SAE's training, advanced one step at a time, so several SAEs can share each batch.

    Each Training keeps its own copy of the global RNG state (restored before its step, saved after),
    so a variant that draws random numbers (neighbour offsets, negatives) draws the same ones whether
    its SAE trains alone or beside others: a swept SAE equals the same SAE trained alone."""

    def __init__(self, sae, buffer: ActivationBuffer, settings: TrainSettings, hook_index: int = 0,
                 resumed: dict | None = None, rates: dict[str, float] | None = None):
        """`resumed`: a checkpoint's state of this training (trainers/checkpoint.py), whose SAE `sae` is:
        the training goes on from there instead of starting. `rates`: the variant's LEARNING_RATES."""
        self.n_steps = settings.n_steps
        if self.n_steps < 1:
            raise TrainingFailed(f"n_tokens={settings.n_tokens} < batch_size={settings.batch_size}: 0 training steps")
        self.sae, self.buffer, self.settings, self.hook_index = sae, buffer, settings, hook_index
        device = str(buffer.device)
        if resumed is None:
            torch.manual_seed(settings.seed)
            sae.to(device)
            with torch.no_grad():  # b_dec at the data mean: most of the residual's energy is its mean
                sae.b_dec.data = buffer.mean_activation(hook_index).to(sae.b_dec)
            renormalize_decoder(sae)
            if settings.encoder_init_norm != 1.0:  # 1: SAELens's W_enc = W_dec.T already has unit rows
                with torch.no_grad():
                    sae.W_enc.data *= settings.encoder_init_norm / sae.W_enc.norm(dim=0, keepdim=True)
        constrain_decoder(sae)
        self.grad_sync = distributed.GradientAverage(sae)  # under torchrun: gradients averaged over ranks
        self.lr = learning_rate(settings, sae.cfg.d_sae, rates)
        self.trainer = SAETrainer(
            cfg=SAETrainerConfig(
                total_training_samples=self.n_steps * settings.batch_size,
                train_batch_size_samples=settings.batch_size,
                lr=self.lr,
                lr_end=self.lr,
                lr_scheduler_name="constant",
                lr_warm_up_steps=int(settings.lr_warm_up_frac * self.n_steps),
                lr_decay_steps=int(settings.lr_decay_frac * self.n_steps),
                device=device,
                dead_feature_window=settings.dead_window_steps,
                feature_sampling_window=max(1, self.n_steps),
            ),
            sae=sae,
            data_provider=iter(()),  # unused: we call trainer.step() with our own batches
        )
        if settings.optimizer == "signum":
            use_schedule_free_signum(self.trainer, self.lr, float(buffer.scale[hook_index]))
        self.per_step: dict[str, list[float]] = {}
        self.curves: dict[str, list[float]] = {}
        self.begin_step = getattr(sae, "begin_step", None)  # the variant contract (StepData above)
        self.rng = rng_state()
        self.start = time.perf_counter()
        self.elapsed_before = 0.0  # seconds trained before a resume
        self.last_row: dict[str, float] = {}
        self.flags = Flags(self.n_steps, settings.log_every, sae.cfg.d_sae)
        self.failed: str | None = None  # why this SAE stopped training (a non-finite loss or gradient)
        if resumed is not None:
            self.load_state_dict(resumed)

    STATE = ("per_step", "curves", "rng", "last_row", "flags", "failed")

    def state_dict(self) -> dict:
        """This training's own state beside its SAE and SAELens's trainer state (trainers/checkpoint.py)."""
        return {**{k: getattr(self, k) for k in self.STATE}, "elapsed": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        """`state`: state_dict()'s, plus "trainer_dir", where SAELens saved its trainer's state."""
        for k in self.STATE:
            setattr(self, k, state[k])
        self.elapsed_before = state["elapsed"]
        self.trainer.load_trainer_state(state["trainer_dir"])

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def step(self, step: int, batch: ActivationBatch) -> None:
        set_rng_state(self.rng)
        sae, settings, trainer = self.sae, self.settings, self.trainer
        if self.begin_step is not None:
            self.begin_step(StepData(batch=batch, step=step, source=self.buffer, hook_index=self.hook_index))
        out = trainer.step(batch.acts[:, self.hook_index].float().contiguous())  # one hook of several: a strided view, whose products round otherwise
        trainer.n_training_steps += 1
        distributed.merge_dead_counters(trainer.n_forward_passes_since_fired)
        renormalize_decoder(sae)
        with torch.no_grad():
            row = {
                "loss": out.loss.item(),
                "l0": (out.feature_acts > 0).float().sum(-1).mean().item(),
                "l1_norm": out.feature_acts.abs().sum(-1).mean().item(),
                "explained_variance": distributed.explained_variance(out.sae_in, out.sae_out),
                **{name: v.sum().item() for name, v in out.losses.items()},
                **getattr(sae, "step_metrics", {}),  # a variant's own per-step numbers
            }
        row = distributed.mean_over_ranks(row)  # under torchrun: the whole batch's numbers, the same on every rank
        check_finite(step, {**{name: row[name] for name in out.losses}, "loss": row["loss"]}, sae)
        for k, v in row.items():
            self.per_step.setdefault(k, []).append(v)
        self.last_row = row
        if step % settings.log_every == 0 or step == self.n_steps - 1:
            elapsed = self.elapsed() - self.elapsed_before  # tokens/s of this process's steps
            logged = {
                "step": step + 1,
                "tokens": (step + 1) * settings.batch_size,
                **row,
                "dead_frac": trainer.dead_neurons.float().mean().item(),
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "tokens_per_s": (step + 1 - self.first_step) * settings.batch_size / elapsed,
            }
            self.flags.update(step, logged)
            n_logged = len(self.curves.get("step", []))
            for k in list(self.curves) + [k for k in logged if k not in self.curves]:  # None where a key was absent
                self.curves.setdefault(k, [None] * n_logged).append(logged.get(k))
        self.rng = rng_state()

    first_step = 0  # the first step this process ran (after a resume: the checkpoint's)

    def result(self) -> TrainResult:
        settings = self.settings
        n_steps = len(self.per_step.get("loss", [])) if self.failed else self.n_steps  # steps completed
        wall = self.elapsed()
        tail = max(1, int(settings.final_avg_frac * n_steps))
        final = {k: float(sum(v[-tail:]) / max(1, len(v[-tail:]))) for k, v in self.per_step.items()}
        final["dead_frac"] = self.trainer.dead_neurons.float().mean().item()
        final["alive_frac"] = 1 - final["dead_frac"]
        final["dead_window_tokens"] = settings.dead_window_steps * settings.batch_size
        final["averaged_over_last_steps"] = tail
        return TrainResult(
            n_steps=n_steps,
            n_tokens=n_steps * settings.batch_size,
            wall_time_s=wall,
            tokens_per_s=n_steps * settings.batch_size / max(wall, 1e-9),
            model_tokens=round(distributed.mean_over_ranks({"n": self.buffer.n_model_tokens})["n"] * distributed.world()),
            epochs_started=self.buffer.epochs_started,
            curves=self.curves,
            final=final,
            activation_scale=float(self.buffer.scale[self.hook_index]),
            flags=self.flags.flagged,
            lr=self.lr,
            optimizer=self.settings.optimizer,
            failed=self.failed,
        )

    def eval_weights(self) -> None:
        """Leave the SAE with the weights to evaluate and save: schedule-free's average x (training
        takes its gradients at y); Adam's are the trained ones. Idempotent."""
        if hasattr(self.trainer.optimizer, "eval"):
            self.trainer.optimizer.eval()


def rng_state() -> tuple:
    return torch.random.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state: tuple) -> None:
    torch.random.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def train_sae(sae, buffer: ActivationBuffer, settings: TrainSettings, hook_index: int = 0) -> TrainResult:
    result = train_saes([Training(sae, buffer, settings, hook_index)])[0]
    if result.failed:
        raise NonFiniteTraining(result.failed)
    return result


def train_saes(trainings: list[Training], start_step: int = 0, checkpoint=None, checkpoint_every: int = 0,
               on_failure=None) -> list[TrainResult]:
    """Train several SAEs step by step. Trainings that share a buffer share each batch (one forward
    pass or cache read for all of them); all must have the same number of steps and batch size.
    `start_step`: steps already taken (a resumed checkpoint's). `checkpoint(steps_done)` is called every
    `checkpoint_every` steps and after the last one. A training whose loss or gradient stops being finite
    stops there (`failed` says why; `on_failure(index)` is called at once), the others go on; when all
    have stopped, so does the loop (no checkpoint is written after that: the last one is the last good)."""
    n_steps, batch_size = trainings[0].n_steps, trainings[0].settings.batch_size
    if any(t.n_steps != n_steps or t.settings.batch_size != batch_size for t in trainings):
        raise TrainingFailed("SAEs trained together need the same number of tokens and batch size")
    buffers = list({id(t.buffer): t.buffer for t in trainings}.values())
    what = f"training SAE ({n_steps} steps)" if len(trainings) == 1 else f"training {len(trainings)} SAEs ({n_steps} steps)"
    bar = tqdm(range(start_step, n_steps), desc=what, unit="step", initial=start_step, total=n_steps)
    start = time.perf_counter()
    for t in trainings:
        t.first_step = start_step
    for step in bar:
        batches = {id(b): distributed.my_share(b.next_batch(batch_size)) for b in buffers}  # torchrun: this rank's rows
        for i, t in enumerate(trainings):
            if t.failed:
                continue
            try:
                t.step(step, batches[id(t.buffer)])
            except NonFiniteTraining as err:  # this SAE stops here; the others of a sweep go on
                t.failed = str(err)
                tqdm.write(f"[guard] SAE {i + 1} of {len(trainings)}: {err}" if len(trainings) > 1 else f"[guard] {err}",
                           file=sys.stderr)
                if on_failure is not None:
                    on_failure(i)
        if all(t.failed for t in trainings):
            break
        if step % trainings[0].settings.log_every == 0 or step == n_steps - 1:
            row = next(t for t in trainings if not t.failed).last_row
            bar.set_postfix(loss=f"{row['loss']:.2f}", L0=f"{row['l0']:.0f}", ev=f"{row['explained_variance']:.3f}",
                            tok_s=f"{(step + 1 - start_step) * batch_size / (time.perf_counter() - start):.0f}")
        if checkpoint is not None and ((checkpoint_every and (step + 1) % checkpoint_every == 0) or step == n_steps - 1):
            checkpoint(step + 1)
    for t in trainings:
        t.grad_sync.release()
        t.eval_weights()  # after the last checkpoint, which holds the training point (a resume goes on from it)
    return [t.result() for t in trainings]


@torch.no_grad()
def fold_into_model_space(sae, scale: float) -> None:
    """Make the SAE take and return raw model activations: fold the buffer's normalization scale
    into the weights, then move decoder norms into the encoder so W_dec rows are unit norm."""
    sae.fold_activation_norm_scaling_factor(scale)
    sae.fold_W_dec_norm()

"""Activation buffer: model activations for SAE training, shuffled, normalized, with provenance.

Written by hand because SAELens's ActivationsStore forgets where a row came from (a variant cannot
ask for the activation 3 positions later in the same sequence) and captures one hook per forward.

How it works. Storage holds whole sequences (BOS position dropped) in two halves of `seqs_per_fill`
sequence slots each. A refill runs the model (only up to the deepest hooked layer) on the next
`seqs_per_fill` sequences into the older half, then queues, in random order, the still-unserved
rows of the previous fill together with a random half of the new rows. So every row is served
exactly once, each batch mixes 2 fills' worth of sequences, and every row's sequence is still
resident while it is served: its neighbours (same sequence, other positions) can be read.
Activations are multiplied by a per-hook scale so that E||x|| = sqrt(d_model) (SAELens's
"expected_average_only_in" convention); the trainer folds that scale into the saved SAE.
With an activation cache (trainers/activation_cache.py) a refill reads its sequences' activations
from disk instead of running the model; everything else is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainers import distributed
from trainers.data import TokenSequences
from trainers.model import hook_layer


class BufferError_(ValueError):
    """Buffer settings that cannot work (reported as one line, exit code 2)."""


@dataclass
class ActivationBatch:
    acts: torch.Tensor  # [B, n_hooks, d_model], normalized
    seq: torch.Tensor  # [B] index into the TokenSequences
    pos: torch.Tensor  # [B] token position in that sequence (>= 1: BOS is never served)
    rows: torch.Tensor  # [B] storage rows, for neighbour lookups while the batch is current
    doc: torch.Tensor  # [B] index into sequences.documents (the row's document: its domain/topic tags)


class ActivationBuffer:
    def __init__(
        self,
        model,
        sequences: TokenSequences,
        hook_names: list[str],
        seqs_per_fill: int = 256,
        model_batch_size: int = 16,
        seed: int = 0,
        cache=None,
    ):
        if not hook_names:
            raise BufferError_("at least one hook name is needed")
        self.model = model
        self.cache = cache  # trainers.activation_cache.ActivationCache of these sequences, or None: run the model
        self.sequences = sequences
        self.hook_names = list(hook_names)
        layers = [hook_layer(h, model.cfg.n_layers) for h in self.hook_names]
        self.stop_at_layer = max(layers) + 1  # never run layers (or the unembedding) we do not need
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.seq_len = sequences.tokens.shape[1] - 1  # BOS dropped
        self.seqs_per_fill = min(seqs_per_fill, len(sequences))
        self.model_batch_size = model_batch_size
        n_slots = 2 * self.seqs_per_fill
        d = model.cfg.d_model
        self.storage = torch.zeros(n_slots * self.seq_len, len(hook_names), d, dtype=self.dtype, device=self.device)
        self.slot_seq = torch.full((n_slots,), -1, dtype=torch.long, device=self.device)
        # the document of every stored row (-1: none), so a neighbour lookup can stay inside one document
        self.row_doc = torch.full((n_slots * self.seq_len,), -1, dtype=torch.long, device=self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(sequences), generator=self.generator)
        self.next_seq = 0  # position in self.order
        self.epochs_started = 1
        self.n_fills = 0
        self.queue = torch.empty(0, dtype=torch.long, device=self.device)
        self.leftover = torch.empty(0, dtype=torch.long, device=self.device)
        self.scale: torch.Tensor | None = None  # [n_hooks]
        self.n_model_tokens = 0  # tokens pushed through the model (BOS included); stays 0 when read from a cache
        self.rows_served = torch.zeros(len(sequences), dtype=torch.long)  # per sequence: rows handed to training
        self._topic_masks: dict[str, torch.Tensor] = {}

    # ---- model side -------------------------------------------------------------------------
    @torch.no_grad()
    def _model_acts(self, tokens: torch.Tensor) -> torch.Tensor:
        """[n_seq, seq_len, n_hooks, d] activations for tokens [n_seq, ctx], BOS position dropped."""
        out = []
        for chunk in tokens.split(self.model_batch_size):
            _, cache = self.model.run_with_cache(
                chunk.to(self.device), names_filter=self.hook_names, stop_at_layer=self.stop_at_layer
            )
            out.append(torch.stack([cache[h][:, 1:] for h in self.hook_names], dim=2))
            self.n_model_tokens += chunk.numel()
        return torch.cat(out)

    def _take_sequences(self, n: int) -> torch.Tensor:
        picked = []
        while n > 0:
            if self.next_seq == len(self.order):  # corpus exhausted: start another pass
                self.order = torch.randperm(len(self.sequences), generator=self.generator)
                self.next_seq = 0
                self.epochs_started += 1
            take = self.order[self.next_seq : self.next_seq + n]
            self.next_seq += len(take)
            picked.append(take)
            n -= len(take)
        return torch.cat(picked)

    def _acts_of(self, seq_ids: torch.Tensor) -> torch.Tensor:
        """[n, seq_len, n_hooks, d] unnormalized activations of these sequences. Under torchrun each rank
        computes (or reads) its share and the shares are gathered (trainers/distributed.py)."""
        return distributed.gather_fill(seq_ids, self._my_acts)

    def _my_acts(self, seq_ids: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:  # the same activations, read from disk instead of computed
            return self.cache.fetch(seq_ids).to(self.device)
        return self._model_acts(self.sequences.tokens[seq_ids])

    def _store(self, half: int, seq_ids: torch.Tensor, acts: torch.Tensor) -> int:
        """Normalize `acts` of `seq_ids` into storage half `half`; returns the half's first row."""
        acts = acts * self.scale.to(acts.dtype)[None, None, :, None]
        first_slot = half * self.seqs_per_fill
        rows_per_fill = self.seqs_per_fill * self.seq_len
        start = first_slot * self.seq_len
        self.storage[start : start + rows_per_fill] = acts.reshape(rows_per_fill, len(self.hook_names), -1)
        self.slot_seq[first_slot : first_slot + self.seqs_per_fill] = seq_ids.to(self.device)
        self.row_doc[start : start + rows_per_fill] = self.sequences.doc_index[seq_ids, 1:].reshape(-1).to(self.device)
        return start

    def _refill(self) -> None:
        half = self.n_fills % 2
        seq_ids = self._take_sequences(self.seqs_per_fill)
        acts = self._acts_of(seq_ids)
        if self.scale is None:  # fixed once, from the first fill
            norms = acts.float().norm(dim=-1)  # [seqs, positions, n_hooks]; per hook contiguous, so that a
            # hook's scale is the same number whether or not other hooks are collected beside it
            mean_norm = torch.stack([norms[:, :, h].contiguous().mean() for h in range(norms.shape[-1])])
            self.scale = (math.sqrt(acts.shape[-1]) / mean_norm).to(self.device)
        start = self._store(half, seq_ids, acts)
        rows_per_fill = self.seqs_per_fill * self.seq_len
        new_rows = start + torch.randperm(rows_per_fill, generator=self.generator).to(self.device)
        split = 0 if self.n_fills == 0 else rows_per_fill // 2  # the first fill is served whole
        served_now, kept = new_rows[split:], new_rows[:split]
        mix = torch.cat([self.leftover, served_now])
        self.queue = torch.cat([self.queue, mix[torch.randperm(len(mix), generator=self.generator).to(self.device)]])
        self.leftover = kept
        self.n_fills += 1

    # ---- checkpoints ------------------------------------------------------------------------
    STATE = ("order", "next_seq", "epochs_started", "n_fills", "queue", "leftover", "scale", "n_model_tokens",
             "rows_served", "slot_seq")

    def state_dict(self) -> dict:
        """Where the buffer stands between two steps: its position in the data, what is queued, every
        random-number state. The stored activations are not saved: load_state_dict computes them again."""
        out = {k: getattr(self, k) for k in self.STATE}
        return {**{k: v.cpu().clone() if torch.is_tensor(v) else v for k, v in out.items()},  # copies: the buffer goes on
                "generator": self.generator.get_state(), "n_sequences": len(self.sequences),
                "hooks": self.hook_names, "seqs_per_fill": self.seqs_per_fill}

    def load_state_dict(self, state: dict) -> None:
        """Back to `state`: the storage halves get the activations of the sequences resident then,
        computed (or read from the cache) exactly as their refill did, so every later batch, and every
        neighbour lookup, is what it would have been."""
        mine = {"n_sequences": len(self.sequences), "hooks": self.hook_names, "seqs_per_fill": self.seqs_per_fill}
        if any(state[k] != v for k, v in mine.items()):
            raise BufferError_(f"the checkpoint's buffer ({', '.join(f'{k} {state[k]}' for k in mine)}) is not this "
                               f"run's ({', '.join(f'{k} {v}' for k, v in mine.items())})")
        for k in self.STATE:
            v = state[k]
            if torch.is_tensor(v):
                v = v.clone() if k in ("order", "rows_served") else v.to(self.device, copy=True)  # never shared with `state`
            setattr(self, k, v)
        self.generator.set_state(state["generator"])
        n_model_tokens = self.n_model_tokens
        for half in (0, 1):
            seq_ids = self.slot_seq[half * self.seqs_per_fill:(half + 1) * self.seqs_per_fill]
            if (seq_ids >= 0).all():
                self._store(half, seq_ids.cpu(), self._acts_of(seq_ids.cpu()))
        self.n_model_tokens = n_model_tokens  # the recomputation is not training's model work

    # ---- trainer side -----------------------------------------------------------------------
    def ensure_started(self) -> None:
        if self.n_fills == 0:
            self._refill()

    def next_batch(self, batch_size: int) -> ActivationBatch:
        self.ensure_started()
        if batch_size > self.seqs_per_fill * self.seq_len // 2:
            raise BufferError_(
                f"batch of {batch_size} rows needs seqs_per_fill >= {2 * batch_size // self.seq_len + 1} (is {self.seqs_per_fill})"
            )
        if len(self.queue) < batch_size:
            # Rows still queued may live in the half the refill overwrites: copy them out first.
            carry = self._gather(self.queue)
            self.queue = self.queue[:0]
            self._refill()  # one refill queues >= half a fill, which is >= batch_size (checked above)
            rest = self._gather(self.queue[: batch_size - len(carry.rows)])
            self.queue = self.queue[batch_size - len(carry.rows) :]
            carry.rows = torch.full_like(carry.rows, -1)  # their storage may be gone: no neighbours
            batch = ActivationBatch(*(torch.cat([getattr(carry, f), getattr(rest, f)])
                                      for f in ("acts", "seq", "pos", "rows", "doc")))
        else:
            rows, self.queue = self.queue[:batch_size], self.queue[batch_size:]
            batch = self._gather(rows)
        self.rows_served += torch.bincount(batch.seq.cpu(), minlength=len(self.rows_served))
        return batch

    def _gather(self, rows: torch.Tensor) -> ActivationBatch:
        slot, t = rows // self.seq_len, rows % self.seq_len
        return ActivationBatch(acts=self.storage[rows], seq=self.slot_seq[slot], pos=t + 1, rows=rows,
                               doc=self.row_doc[rows])

    def neighbours(self, batch: ActivationBatch, offset: torch.Tensor | int):
        """Activations at position pos+offset of the same document, for every row of `batch`.

        Returns (acts [B, n_hooks, d], valid [B]); invalid where the neighbour would fall outside the
        sequence, on BOS, in another document packed into the same sequence, or where the row's
        storage was recycled (rows == -1).
        """
        offset = torch.as_tensor(offset, device=self.device).expand_as(batch.rows)
        t = batch.rows % self.seq_len + offset
        valid = (batch.rows >= 0) & (t >= 0) & (t < self.seq_len)
        rows = torch.where(valid, batch.rows - batch.rows % self.seq_len + t, torch.zeros_like(t))
        valid &= self.row_doc[rows] == batch.doc
        return self.storage[rows], valid

    def served_description(self) -> dict:
        """What training actually read: sequences and documents served, and rows served again (a row served twice counts once)."""
        seq_len = self.seq_len
        served = self.rows_served
        touched = served.nonzero().squeeze(1)
        docs = self.sequences.doc_index[touched, 1:]
        return {"sequences_served": int(len(touched)), "documents_served": int(docs[docs >= 0].unique().numel()),
                "rows_served": int(served.sum()), "rows_repeated": int((served - seq_len).clamp_min(0).sum()),
                "passes_started": self.epochs_started, "sequences_available": len(served)}

    def has_topic(self, batch: ActivationBatch, topic: str) -> torch.Tensor:
        """[B] bool: whether each row's document carries `topic` (the domain tag variants group by)."""
        if topic not in self._topic_masks:
            self._topic_masks[topic] = torch.tensor([d.topic == topic for d in self.sequences.documents],
                                                    dtype=torch.bool, device=self.device)
        return self._topic_masks[topic][batch.doc]

    def mean_activation(self, hook_index: int = 0) -> torch.Tensor:
        """Mean normalized activation over the current storage (used to initialize b_dec)."""
        self.ensure_started()
        filled = self.slot_seq.repeat_interleave(self.seq_len) >= 0
        return self.storage[filled, hook_index].float().contiguous().mean(dim=0)

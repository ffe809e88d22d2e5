"""Streaming top-k selection per neuron (torch, device-agnostic): the harvest's kept excerpts.

Two update paths keep identical results:
- the sparse path (CPU) looks at the data on the host to touch only the columns and rows that can
  enter, and copies the activations of entrants only;
- the sync-free path (CUDA and any other accelerator) uses fixed shapes only, so the host never waits
  for the device: no `.item()`, no `nonzero`, no boolean-mask indexing. Its dense work is bounded by k
  per column, which a GPU does in microseconds, instead of stalling its queue once per layer.

Layouts are chosen for the update: small per-column arrays are (columns, k) rows; activation rows are
stored token-major (T, columns, k), so that the entrants of a batch, taken in column order, are read
along the neuron axis of the (B, T, N) batch and written nearly in order. `state_dict` and
`sorted_acts` use the (k, columns, T) layout.
"""

from __future__ import annotations

import torch

_NEG_INF = float("-inf")


def is_sync_free(device: torch.device | str) -> bool:
    """Whether reducers on `device` take the sync-free path (every device but the CPU)."""
    return torch.device(device).type != "cpu"


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a host tensor to `device` without making the host wait for the device's queue.

    A plain `.to("cuda")` from pageable memory synchronises the stream; from pinned memory with
    `non_blocking=True` the copy is queued like a kernel (the caching host allocator keeps the pinned
    buffer alive until it is done).
    """
    device = torch.device(device)
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def merge_sorted(
    old_scores: torch.Tensor, old_slots: torch.Tensor, new_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column, the k best of k sorted entries and B candidates, and the slots the entrants take.

    Args:
        old_scores: (C, k), each row sorted by (score desc, id asc), ids below every candidate's.
        old_slots: (C, k) storage slot of each old entry.
        new_scores: (C, B) candidates in ascending id order.

    Returns:
        top (C, k): index into the (k + B) concatenation of the entry now at each rank;
        is_new (C, k): whether that entry is a candidate (index k + batch row);
        slot (C, k): storage slot of each kept entry. Entrants take the slots of the evicted entries,
        matched in rank order; the kept old entries are always a prefix of the old ones, so the evicted
        ones are their last `entrants` entries.
    """
    k = old_scores.shape[1]
    # Stable sort: on equal scores old entries (lower ids) stay ahead of candidates, and candidates
    # keep their ascending id order.
    top = torch.sort(torch.cat([old_scores, new_scores], 1), dim=1, descending=True, stable=True).indices[:, :k]
    is_new = top >= k
    freed = k - is_new.sum(1, keepdim=True) + torch.cumsum(is_new, 1) - 1
    source = torch.where(is_new, freed, top).clamp_(0, k - 1)
    return top, is_new, torch.gather(old_slots, 1, source)


def token_planes(x: torch.Tensor) -> torch.Tensor:
    """A copy-free (T, M) view of a (B, T, N) tensor whose row t, at b * stride(0) + n * stride(2), is x[b, t, n].

    Gathering entrants through it takes one (E,) index for all T tokens.
    """
    sb, st, sn = x.stride()
    b, t, n = x.shape
    width = 1 + (b - 1) * sb + (n - 1) * sn
    return x.as_strided((t, width), (st, 1), x.storage_offset())


class SelectK:
    """Per neuron, keep the k candidates of highest score together with their activation rows.

    Order is (score descending, excerpt id ascending). Candidates must arrive in increasing id order
    within one reducer; `merge` handles arbitrary id order. A score of -inf marks a candidate as
    ineligible; empty slots hold id -1.

    Activation rows live in fixed slots and only the small score/id/slot arrays are kept sorted, so an
    update copies just the rows of candidates that enter, not the whole buffer.

    With `groups` > 1 the reducer keeps k per (group, neuron) column, column g * N + n reading neuron n's
    activations; each candidate (excerpt, neuron) belongs to one group (the quantile buckets).
    """

    def __init__(
        self,
        k: int,
        n_neurons: int,
        seq_len: int,
        *,
        device: torch.device | str,
        act_dtype: torch.dtype,
        score_dtype: torch.dtype = torch.float32,
        groups: int = 1,
        sync_free: bool | None = None,
    ) -> None:
        self.k = k
        self.n_neurons = n_neurons
        self.groups = groups
        self.sync_free = is_sync_free(device) if sync_free is None else sync_free
        """Take the fixed-shape path (default: on every device but the CPU; both keep the same results)."""
        cols = groups * n_neurons
        self.scores = torch.full((cols, k), _NEG_INF, dtype=score_dtype, device=device)
        self.ids = torch.full((cols, k), -1, dtype=torch.int64, device=device)
        self.slots = torch.arange(k, device=device).repeat(cols, 1)
        self.acts = torch.zeros((seq_len, cols, k), dtype=act_dtype, device=device)

    def candidates(self, scores: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
        """(B, groups * N) candidate scores from (B, N) scores and, with groups, each one's group (B, N)."""
        scores = scores.to(self.scores.dtype)
        if self.groups == 1:
            return scores
        if group is None:
            raise ValueError("a grouped selection needs each candidate's group")
        which = torch.arange(self.groups, device=scores.device)[None, :, None]
        return torch.where(group[:, None, :] == which, scores[:, None, :], _NEG_INF).reshape(scores.shape[0], -1)

    def update(
        self, scores: torch.Tensor, ids: torch.Tensor, acts: torch.Tensor, group: torch.Tensor | None = None
    ) -> None:
        """Offer a batch: scores (B, N), excerpt ids (B,), activations (B, T, N); `group` (B, N) if grouped."""
        if self.k == 0:
            return
        if self.groups > 1 and group is None:
            raise ValueError("a grouped SelectK needs the group of every candidate")
        ids = to_device(ids, self.ids.device)
        if self.sync_free:
            self._update_dense(self.candidates(scores, group), ids, acts)
        else:
            self._update_sparse(scores.to(self.scores.dtype), group, ids, acts)

    def _update_sparse(
        self, scores: torch.Tensor, group: torch.Tensor | None, ids: torch.Tensor, acts: torch.Tensor
    ) -> None:
        # Only (row, column) pairs that beat the current k-th entry can enter; after the first batches
        # that is a small fraction. Strict ">": on a tie the kept entry has the lower id and wins.
        # (index_select and take, not advanced indexing: several times faster on small CPU tensors)
        n, k, threshold = self.n_neurons, self.k, self.scores[:, -1]
        if group is None:
            hit = scores > threshold
            cols = hit.any(0).nonzero().squeeze(1)
        else:
            column = group * n + torch.arange(n)  # each candidate's column
            hit = scores > torch.take(threshold, column)
            touched = torch.zeros(self.scores.shape[0], dtype=torch.bool)
            touched[column[hit]] = True
            cols = touched.nonzero().squeeze(1)
        if cols.numel() == 0:
            return
        neuron = cols if group is None else cols % n
        cand = scores.T.contiguous().index_select(0, neuron)  # (c, B)
        if group is not None:  # a grouped column only takes the candidates of its group
            cand = torch.where(column.T.contiguous().index_select(0, neuron) == cols[:, None], cand, _NEG_INF)
        rows = hit.any(1).nonzero().squeeze(1)
        if rows.numel() < len(ids):
            cand, ids = cand.index_select(1, rows), ids.index_select(0, rows)
        old = (self.scores.index_select(0, cols), self.ids.index_select(0, cols), self.slots.index_select(0, cols))
        top, is_new, slot = merge_sorted(old[0], old[2], cand)
        new_row = self._keep(top, is_new, slot, cand, ids, old, cols)
        entrant = is_new.view(-1).nonzero().squeeze(1)  # column-major: reads go along the neuron axis
        batch_row = rows.index_select(0, new_row.view(-1).index_select(0, entrant))
        entry_slot, col = slot.view(-1).index_select(0, entrant), cols.index_select(0, entrant // k)
        sb, _, sn = acts.stride()
        t = acts.shape[1]
        # One (E,) index serves all T tokens; expanded, it makes gather and scatter vectorised loops.
        src = (batch_row * sb + (col % n) * sn)[None, :].expand(t, -1)
        dst = (col * k + entry_slot)[None, :].expand(t, -1)
        values = torch.gather(token_planes(acts), 1, src).to(self.acts.dtype)
        self.acts.view(t, -1).scatter_(1, dst, values)

    def _update_dense(self, cand: torch.Tensor, ids: torch.Tensor, acts: torch.Tensor) -> None:
        top, is_new, slot = merge_sorted(self.scores, self.slots, cand.T)
        new_row = self._keep(top, is_new, slot, cand.T, ids, (self.scores, self.ids, self.slots), None)
        k, (b, t, n), g = self.k, acts.shape, self.groups
        # src[c, s]: the batch row written into slot s of column c, or -1 (index k collects the rest).
        src = torch.full((self.scores.shape[0], k + 1), -1, dtype=torch.int64, device=cand.device)
        src.scatter_(1, torch.where(is_new, slot, k), torch.where(is_new, new_row, -1))
        src = src[:, :k].T.reshape(1, k, g, n)
        # A fixed-shape gather of T * k * columns values from a (T, B, groups, N) view of the batch,
        # whatever enters; neurons stay the innermost axis of the gather on both sides.
        view = acts.transpose(0, 1).unsqueeze(2).expand(t, b, g, n)
        fresh = torch.gather(view, 1, src.clamp(min=0).expand(t, k, g, n)).reshape(t, k, -1).transpose(1, 2)
        keep = (src < 0).reshape(k, -1).T[None]
        self.acts = torch.where(keep, self.acts, fresh.to(self.acts.dtype)).contiguous()

    def _keep(
        self,
        top: torch.Tensor,
        is_new: torch.Tensor,
        slot: torch.Tensor,
        cand: torch.Tensor,
        ids: torch.Tensor,
        old: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        cols: torch.Tensor | None,
    ) -> torch.Tensor:
        """Store the merged scores, ids and slots of `cols` (all if None); returns each entry's candidate index.

        `old` holds those columns' (scores, ids, slots) before the merge with `cand`.
        """
        k = self.k
        old_rank = top.clamp(max=k - 1)
        new_row = (top - k).clamp_(min=0)
        scores = torch.where(is_new, torch.gather(cand, 1, new_row), old[0].gather(1, old_rank))
        new_ids = ids.index_select(0, new_row.view(-1)).view(new_row.shape)
        kept_ids = torch.where(is_new, new_ids, old[1].gather(1, old_rank))
        if cols is None:
            self.scores, self.ids, self.slots = scores, kept_ids, slot
        else:
            self.scores.index_copy_(0, cols, scores)
            self.ids.index_copy_(0, cols, kept_ids)
            self.slots.index_copy_(0, cols, slot)
        return new_row

    def sorted_ids(self) -> torch.Tensor:
        """Kept excerpt ids in score order: (k, groups * N), -1 for empty slots."""
        return self.ids.T

    def sorted_acts(self) -> torch.Tensor:
        """Activation rows in score order: (k, groups * N, T)."""
        t = self.acts.shape[0]
        return torch.gather(self.acts, 2, self.slots[None].expand(t, -1, -1)).permute(2, 1, 0)

    def merge(self, other: SelectK) -> None:
        """Combine with another reducer's state (any id order): exact (score desc, id asc) top-k."""
        scores, ids, acts = merge_states(
            (self.scores.T, self.ids.T, self.sorted_acts()), (other.scores.T, other.ids.T, other.sorted_acts()), self.k
        )
        self.scores, self.ids = scores.T.contiguous(), ids.T.contiguous()
        self.acts = acts.permute(2, 1, 0).contiguous()
        self.slots = torch.arange(self.k, device=self.scores.device).repeat(self.scores.shape[0], 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the state: (k, columns) arrays and (k, columns, T) activations."""
        return {"scores": self.scores.T, "ids": self.ids.T, "slots": self.slots.T, "acts": self.acts.permute(2, 1, 0)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from `state_dict()` output (shapes must match)."""
        current = self.state_dict()
        for name, value in state.items():
            if name in current and value.shape != current[name].shape:
                raise ValueError(f"state {name} has shape {tuple(value.shape)}, expected {tuple(current[name].shape)}")
        for name in ("scores", "ids", "slots"):
            old = getattr(self, name)
            setattr(self, name, state[name].T.to(device=old.device, dtype=old.dtype).contiguous())
        self.acts = state["acts"].permute(2, 1, 0).to(device=self.acts.device, dtype=self.acts.dtype).contiguous()


def merge_states(
    a: tuple[torch.Tensor, torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (score desc, id asc) top-k of two sorted (scores, ids, acts) states whose ids come in any order.

    Scores and ids are (k, ...) and acts (k, ..., T), ranks first.
    """
    scores, ids, acts = (torch.cat([x, y], 0) for x, y in zip(a, b, strict=True))
    # Sort by id first, then stably by score: ties in score keep ascending id order.
    id_key = torch.where(ids < 0, torch.iinfo(torch.int64).max, ids)
    by_id = torch.sort(id_key, dim=0, stable=True).indices
    by_score = torch.sort(scores.gather(0, by_id), dim=0, descending=True, stable=True).indices[:k]
    order = by_id.gather(0, by_score)
    picked = order.reshape(order.shape + (1,) * (acts.dim() - order.dim())).expand((k,) + acts.shape[1:])
    return scores.gather(0, order), ids.gather(0, order), acts.gather(0, picked)


class SharedSelectK:
    """Like SelectK, for scores that depend on the excerpt only: one selection serves every neuron.

    The selection (scores, ids, slots: (k,) each) is made on the host from host-side scores, the
    uniform sampling keys, so it never waits for the device; only the activation rows (k, T, N) live on
    the device, and an update copies the whole rows of entrants only.
    """

    def __init__(
        self,
        k: int,
        n_neurons: int,
        seq_len: int,
        *,
        device: torch.device | str,
        act_dtype: torch.dtype,
        score_dtype: torch.dtype = torch.float64,
    ) -> None:
        self.k = k
        self.n_neurons = n_neurons
        self.scores = torch.full((k,), _NEG_INF, dtype=score_dtype)
        self.ids = torch.full((k,), -1, dtype=torch.int64)
        self.slots = torch.arange(k)
        self.acts = torch.zeros((k, seq_len, n_neurons), dtype=act_dtype, device=device)

    def update(self, scores: torch.Tensor, ids: torch.Tensor, acts: torch.Tensor) -> None:
        """Offer a batch: host scores (B,), host excerpt ids (B,), activations (B, T, N) on the device."""
        if self.k == 0:
            return
        scores = scores.to("cpu", self.scores.dtype)
        rows = (scores > self.scores[-1]).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        k = self.k
        top, is_new, slot = (x[0] for x in merge_sorted(self.scores[None], self.slots[None], scores[rows][None]))
        new_row = (top - k).clamp(min=0)
        old_rank = top.clamp(max=k - 1)
        self.scores = torch.where(is_new, scores[rows][new_row], self.scores[old_rank])
        self.ids = torch.where(is_new, ids[rows][new_row], self.ids[old_rank])
        self.slots = slot
        # at most B entrants, each a whole (T, N) row: copied one by one, with no gathered copy between
        for s, r in zip(slot[is_new].tolist(), rows[new_row[is_new]].tolist(), strict=True):
            self.acts[s].copy_(acts[r])

    def sorted_ids(self) -> torch.Tensor:
        """Kept excerpt ids in score order, the same for every neuron: (k, N) on the device."""
        return self.ids.to(self.acts.device)[:, None].expand(self.k, self.n_neurons)

    def sorted_acts(self) -> torch.Tensor:
        """Activation rows in score order: (k, N, T)."""
        return self.acts[self.slots.to(self.acts.device)].transpose(1, 2)

    def merge(self, other: SharedSelectK) -> None:
        """Combine with another reducer's state (any id order): exact (score desc, id asc) top-k."""
        self.scores, self.ids, acts = merge_states(
            (self.scores, self.ids, self.sorted_acts().cpu()), (other.scores, other.ids, other.sorted_acts().cpu()),
            self.k,
        )  # fmt: skip
        self.acts = acts.transpose(1, 2).to(self.acts.device).contiguous()
        self.slots = torch.arange(self.k)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully describe the state, in SelectK's layout (its columns all equal)."""
        cols = (self.k, self.n_neurons)
        return {
            "scores": self.scores[:, None].expand(cols),
            "ids": self.ids[:, None].expand(cols),
            "slots": self.slots[:, None].expand(cols),
            "acts": self.acts.transpose(1, 2),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from `state_dict()` output, or from a SelectK's whose columns are all equal."""
        current = self.state_dict()
        for name, value in state.items():
            if name in current and value.shape != current[name].shape:
                raise ValueError(f"state {name} has shape {tuple(value.shape)}, expected {tuple(current[name].shape)}")
        self.scores = state["scores"][:, 0].to("cpu", self.scores.dtype).contiguous()
        self.ids = state["ids"][:, 0].to("cpu", torch.int64).contiguous()
        self.slots = state["slots"][:, 0].to("cpu", torch.int64).contiguous()
        self.acts = state["acts"].transpose(1, 2).to(device=self.acts.device, dtype=self.acts.dtype).contiguous()

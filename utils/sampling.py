"""The training loaders: a seeded, resumable (and shardable) order over a dataset, and the DataLoader around it.

The original shuffled with ``DataLoader(shuffle=True)``: an order drawn from the global RNG, lost on a restart. Here
the order is a pure function of ``(seed, epoch)``, so a resumed run can skip exactly the samples the interrupted run
consumed and then see the same batches an uninterrupted run would have seen.

The training datasets repeat their list to at least ``num_steps * iter_size * batch_size`` items (the original's
``max_iters``), so one "epoch" of this sampler already covers the whole run; the sampler still goes on with a fresh
permutation (``epoch + 1``) instead of stopping, should a run ever need more.

Distributed use (one sampler per rank): global position ``g`` (0, 1, 2, ... over all ranks) maps to index
``perm_{g // n}[g % n]``; rank ``r`` of ``R`` takes the positions ``g`` with ``g % R == r``. With ``R = 1`` this is
simply the permutation, in order.
"""
from __future__ import annotations

import signal
from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "ignore_stop_signals_in_worker", "training_loader", "shutdown_loader"]

#: Batches each DataLoader worker keeps ready. uint8 batches (the training script's) are a quarter of the float32 ones,
#: so 4 cost half the shared memory that 2 did, and they cover a slow read (a cold page cache, a network file system)
#: of 4 steps per worker without the GPU waiting.
PREFETCH_FACTOR = 4


class ResumableSampler(Sampler[int]):
    """Infinite seeded order over ``range(dataset_len)``, starting at global position ``start``.

    ``dataset_len``: number of items (the repeated list). ``seed``: the run's ``--random-seed``; ``salt`` keeps two
    loaders with the same seed (source and target domain) from sharing an order. ``start``: global position of the
    first sample to yield (``samples consumed so far`` on all ranks together). ``rank``/``num_replicas``: this
    process's share (see the module docstring).

    The sampler never ends; the training loop draws exactly the batches it needs.
    """

    def __init__(self, dataset_len: int, seed: int = 0, start: int = 0, rank: int = 0, num_replicas: int = 1,
                 salt: int = 0) -> None:
        if dataset_len <= 0:
            raise ValueError(f"ResumableSampler needs a non-empty dataset, got length {dataset_len}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for {num_replicas} replicas")
        if start < 0:
            raise ValueError(f"start position must be >= 0, got {start}")
        self.dataset_len = dataset_len
        self.seed = seed
        self.salt = salt
        self.start = start
        self.rank = rank
        self.num_replicas = num_replicas

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of pass ``epoch`` over the data: a fixed function of ``(seed, salt, epoch)``."""
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.salt * 7_919 + epoch) % (2**63))
        return torch.randperm(self.dataset_len, generator=g)

    def first_position(self) -> int:
        """The first global position >= ``start`` that belongs to this rank."""
        return self.start + (self.rank - self.start) % self.num_replicas

    def __iter__(self) -> Iterator[int]:
        position = self.first_position()
        epoch = position // self.dataset_len
        perm = self.permutation(epoch)
        while True:
            e, offset = divmod(position, self.dataset_len)
            if e != epoch:
                epoch, perm = e, self.permutation(e)
            yield int(perm[offset])
            position += self.num_replicas


def ignore_stop_signals_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGINT/SIGTERM.

    Ctrl-C reaches the whole process group; if the workers died with it, the main process could not finish the
    iteration it is in and save a resumable state at its end. The main process handles the signal and shuts the
    workers down itself (and workers exit by themselves should the main process vanish).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def training_loader(dataset, *, batch_size: int, num_workers: int, seed: int, start: int, salt: int, rank: int = 0,
                    world_size: int = 1, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` in the seeded, resumable order from global sample position ``start`` (each rank
    its own share). ``num_workers`` processes, each keeping :data:`PREFETCH_FACTOR` batches ready, persistent (the
    order never ends, so they are started once anyway) and deaf to SIGINT/SIGTERM; ``pin_memory`` on CUDA."""
    sampler = ResumableSampler(len(dataset), seed=seed, start=start, rank=rank, num_replicas=world_size, salt=salt)
    workers = num_workers > 0
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        worker_init_fn=ignore_stop_signals_in_worker, generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers, prefetch_factor=PREFETCH_FACTOR if workers else None)


def shutdown_loader(loader: torch.utils.data.DataLoader) -> None:
    """Stop a DataLoader's persistent workers now. They ignore SIGINT/SIGTERM (a Ctrl-C lets the iteration finish);
    left to interpreter exit after an error, multiprocessing would terminate and join them, and wait for ever."""
    iterator, loader._iterator = loader._iterator, None  # None without workers (nothing to stop)
    if iterator is not None:
        iterator._shutdown_workers()

"""Resident memory of a long distillation: measuring it, and the glibc allocator settings that keep it flat."""

import ctypes
import os


def resident_gb() -> float:
    """This process's resident memory now (Linux /proc; 0 elsewhere), for the memory curve of a long run."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError):
        return 0.0


def peak_resident_gb() -> float:
    """The most resident memory this process has held so far (getrusage: between validations too; 0 off Unix)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux
    except (ImportError, OSError):
        return 0.0


def bound_allocator_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does) before the loader and Zarr's decoding threads start.

    glibc gives threads that allocate their own heap; chunks decoded in Zarr's thread pool are freed from
    another thread, and each arena keeps what is freed into it, so resident memory grows with the thread count
    and batch-size variety rather than with what is alive (bench/store_vs_shards.py measured 0.47 GB against
    0.33 GB with one arena). A no-op off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); the loader calls it whenever it lets
    go of a shuffle buffer (every ~16 training steps by default).

    Batches differ in length and channel count, so every step frees tensors of new sizes in the middle of the
    heap, which glibc keeps for reuse but never returns: resident memory climbed with the largest batches seen
    (0.93 GB at step 100, 1.29 GB at 500 of a default run; trimmed every 10 steps: 0.79-0.87 GB from step 100 to
    500, at the same speed; bench/distill_memory.py measures the shipped setting over 3000 steps). A no-op off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass

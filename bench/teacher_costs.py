"""What each teacher kind costs: CPU milliseconds per second of 16 kHz audio and per 1000 samples of unknown rate.

Two presentations, because the teachers treat them differently:
  - 16 kHz audio: one channel of `--seconds` seconds at 16000 Hz (the audio teachers' native rate; spectral and
    iclabel reinterpret it as 256 Hz, so it is 62.5x longer to them);
  - unknown rate: `--series` series of 1000 samples, sampling_rate None (what UCR-like sets give; crepe and
    resemblyzer stretch them to 4096 and 16000 samples first).
Each figure is the fastest of `--repeats` timed runs after one warm-up (this 2-core machine is shared, so the
fastest run is the one least disturbed), with torch's default thread count unless `--threads` (on a loaded
machine one thread is steadier). Prints a markdown table.

    python bench/teacher_costs.py [--seconds 4] [--series 16] [--repeats 3] [--threads 1] [--teachers ...]
"""

import argparse
import logging
import os
import time

import numpy as np
import torch

from pipeline.teachers import load_teacher

log = logging.getLogger("teacher_costs")

# name -> spec; the name is what the table shows
TEACHERS = {
    "silero_vad": {"kind": "silero_vad"},
    "fracast": {"kind": "fracast"},
    "spectral": {"kind": "spectral"},
    "crepe (tiny, hop 256)": {"kind": "crepe"},
    "crepe (tiny, hop 1024)": {"kind": "crepe", "hop": 1024},
    "crepe (full, hop 1024)": {"kind": "crepe", "model": "full", "hop": 1024},
    "resemblyzer": {"kind": "resemblyzer"},
    "iclabel": {"kind": "iclabel"},
}


def fastest_seconds(teacher, values: np.ndarray, rate: float | None, repeats: int) -> float:
    teacher.encode(values, rate)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        teacher.encode(values, rate)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of 16 kHz audio per timing")
    parser.add_argument("--series", type=int, default=16, help="series of 1000 samples (unknown rate) per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--teachers", nargs="*", default=list(TEACHERS), help="names from the table (default all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    audio = rng.standard_normal((1, 1, int(args.seconds * 16000))).astype(np.float32)
    short = np.cumsum(rng.standard_normal((args.series, 1, 1000)), axis=-1).astype(np.float32)
    rows = []
    for name in args.teachers:
        spec = TEACHERS[name] if TEACHERS[name]["kind"] == "spectral" else {**TEACHERS[name], "device": "cpu"}
        teacher = load_teacher(name, spec)
        per_audio_second = fastest_seconds(teacher, audio, 16000.0, args.repeats) / args.seconds
        per_short_series = fastest_seconds(teacher, short, None, args.repeats) / args.series
        rows.append((name, teacher.feature_dim, teacher.num_tokens(16000, 16000.0), teacher.num_tokens(1000, None),
                     1e3 * per_audio_second, 1e3 * per_short_series))  # fmt: skip
        log.info("%s: %.1f ms per s of 16 kHz audio, %.1f ms per 1000 samples", name, *(1e3 * per_audio_second,
                 1e3 * per_short_series))  # fmt: skip

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print("| teacher | features | tokens per s at 16 kHz | tokens per 1000 samples (rate unknown) "
          "| ms per s of 16 kHz audio | ms per 1000 samples (rate unknown) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, dim, tokens_audio, tokens_short, ms_audio, ms_short in rows:
        print(f"| {name} | {dim} | {tokens_audio} | {tokens_short} | {ms_audio:.1f} | {ms_short:.1f} |")


if __name__ == "__main__":
    main()

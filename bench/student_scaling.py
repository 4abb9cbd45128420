"""How embedding one series scales with its length T (1e3 ... 1e7 samples) on the CPU.

Prints, for each T, the best-of-N time to embed one single-channel series with `STEPEncoder.embed`, the time per sample
and the peak resident memory of the process so far (sizes run in increasing order, so the last line is the peak
of the 1e7-sample run). Goals: time per sample not growing with T (linear cost; it falls while the fixed cost of
the Transformer dominates) and peak RSS under 2 GB at 1e7.

    python bench/student_scaling.py [--model DIR] [--preset cpu-small] [--repeats 3] [--threads 2]
"""

import argparse
import resource
import time

import numpy as np
import torch

from pipeline import STEPConfig, STEPEncoder


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved STEP encoder directory (default: random weights of --preset)")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--lengths", default="1e3,1e4,1e5,1e6,1e7", help="comma-separated series lengths")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per length; the best is reported, the run least disturbed by other processes")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = STEPEncoder.from_pretrained(args.model) if args.model else STEPEncoder(STEPConfig.from_preset(args.preset))
    rng = np.random.default_rng(0)
    print(f"model: {args.model or args.preset}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{args.threads} threads; baseline peak RSS {peak_rss_mb():.0f} MB")
    print(f"{'T':>10} {'tokens':>7} {'seconds':>9} {'ns/sample':>10} {'peak RSS MB':>12}")
    for length in (int(float(x)) for x in args.lengths.split(",")):
        # a random walk plus noise: non-stationary, like many real series
        series = (np.cumsum(rng.standard_normal(length)) + rng.standard_normal(length)).astype(np.float32)
        model.embed([series[:1000]])  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            embedding = model.embed([series])
            seconds.append(time.perf_counter() - start)
        assert np.isfinite(embedding).all()
        with torch.inference_mode():
            _, tokens, _ = model.choose_strides(torch.tensor([length]), torch.tensor([float("nan")]), None)
        best = min(seconds)
        print(f"{length:>10.0e} {int(tokens[0]):>7} {best:>9.3f} {1e9 * best / length:>10.1f} {peak_rss_mb():>12.0f}")
        del series


if __name__ == "__main__":
    main()

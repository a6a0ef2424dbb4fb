"""`python -m benchmarks`: the benchmark suite (the same command as `lifeline bench`)."""

from benchmarks.cli import bench

if __name__ == "__main__":
    bench(prog_name="python -m benchmarks")

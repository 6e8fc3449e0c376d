"""`python -m bench.provisioning`: run the station benchmark and write docs/benchmarks-provisioning.md."""

from __future__ import annotations

import sys

from bench.provisioning.bench_station import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "--write", *sys.argv[1:]]
    main()

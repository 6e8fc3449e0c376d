"""`python -m bench.rtsp`: the RTSPS fan-out benchmark against gst-rtsp-server and the TLS floor."""

import sys

from bench.rtsp.bench_rtsp import main

sys.exit(main())

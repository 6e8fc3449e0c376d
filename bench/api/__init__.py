"""Management-plane benchmarks: authenticated HTTPS requests/s against nginx, login latency and
event-loop lag under a wrong-login flood. Run with ``python -m bench.api``."""

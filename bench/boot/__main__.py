"""`python -m bench.boot`: boot-to-agent-ready under TCG, with and without verification."""

import sys

from bench.boot.boot_time import main

sys.exit(main())

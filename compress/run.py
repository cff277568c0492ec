"""`python -m compress.run --config configs/micro.toml`: the compression pipeline (compress.pipeline)
as one command."""

import sys

from compress.pipeline.driver import main

if __name__ == "__main__":
    sys.exit(main())

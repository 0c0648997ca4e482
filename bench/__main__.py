"""`python -m bench`."""

import sys

from bench import ensure_import_paths

ensure_import_paths()

from bench.cli import main  # noqa: E402 - after the import paths are set

sys.exit(main())

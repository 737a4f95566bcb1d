"""`python -m tools`: write or check the generated files (see `generate`)."""

import sys

from tools import generate

sys.exit(generate.main())

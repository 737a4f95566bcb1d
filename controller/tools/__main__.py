"""`python -m controller.tools`: write or check the generated files (see `generate`)."""

import sys

from controller.tools import generate

sys.exit(generate.main())

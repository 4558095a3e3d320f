"""``python -m apcv_verify.cli``: the ``apcv-verify`` command."""

from .main import main

raise SystemExit(main())

"""`python -m service ...` is the same as the `bankrace` command."""

from service.cli import main

raise SystemExit(main())

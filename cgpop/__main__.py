"""`python -m cgpop` is the `cgpop` command."""

from cgpop.cli import main

raise SystemExit(main())

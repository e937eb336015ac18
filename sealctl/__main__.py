"""`python -m sealctl ...` is the `sealstore` command."""
from sealctl.main import main

raise SystemExit(main())

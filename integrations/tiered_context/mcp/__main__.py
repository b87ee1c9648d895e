"""``python -m tiered_context.mcp [--path DIR] [--tenant T] [--http PORT [--token TOKEN]] [--version]``."""

from tiered_context.mcp import main

raise SystemExit(main())

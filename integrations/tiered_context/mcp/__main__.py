"""``python -m tiered_context.mcp [--path DIR] [--http PORT]``."""

from tiered_context.mcp import main

raise SystemExit(main())

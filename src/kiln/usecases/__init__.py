"""The commands, one module each, over a `kiln.context.Context` (the CLI and `kiln serve` reach
them through `kiln.project.Project`'s thin methods)."""

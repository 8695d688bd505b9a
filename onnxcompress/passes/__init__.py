"""One module per pass; each has a frozen Config dataclass and run(graph, cfg, ctx) -> PassReport."""

"""The model: its spec, the shape rules, KV element formats and the ideal cache layout. Pure."""

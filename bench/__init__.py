"""Performance benchmarks, each measuring our path and a peer's side by side in one process."""

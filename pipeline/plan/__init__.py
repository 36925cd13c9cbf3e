"""What is decided before any block runs: the block grid, its cost, empty space, the output's size,
regions, and the prepared run (config, input metadata, model, outputs)."""

"""The cache agent: per-node DRAM and SSD tiers of checkpoints (one per node)."""

"""`soft-dist shard`: dataset layouts, face alignment, encoding, shard writing and verification.

The format the shards follow is soft_dist.data.format, shared with the readers in soft_dist.data."""

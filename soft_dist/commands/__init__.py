"""Sub-command modules of the `soft-dist` CLI (see soft_dist.cli)."""

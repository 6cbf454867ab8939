"""What every run directory holds before its first step: the resolved config (config.yaml) and the
noise table every rank trains on (noise_table.csv). The driver writes both when a run starts (and the
config again on resume); resuming, auditing and `soft-dist noise export` read them back. A folder
without both was not written by training, and each of those commands says so in its own words.
"""

from __future__ import annotations

from soft_dist.config import Config, config_yaml
from soft_dist.noise.table import NoiseTable
from soft_dist.run_files import CONFIG_FILE, NOISE_TABLE_FILE
from soft_dist.storage import RunStore

RUN_INPUT_FILES = (CONFIG_FILE, NOISE_TABLE_FILE)


def write_run_inputs(store: RunStore, cfg: Config, table: NoiseTable) -> None:
    """The driver's part of a new run: the resolved config and the noise table every rank uses."""
    store.write_text(CONFIG_FILE, config_yaml(cfg))
    store.write_text(NOISE_TABLE_FILE, table.to_csv())


def missing_run_input(store: RunStore) -> str | None:
    """The first of RUN_INPUT_FILES that ``store`` lacks (None: it holds both, a run directory)."""
    return next((name for name in RUN_INPUT_FILES if not store.exists(name)), None)


def read_noise_table(store: RunStore) -> NoiseTable:
    """The run's noise table; ValueError naming the file when it is not a valid table."""
    return NoiseTable.from_csv(store.read_text(NOISE_TABLE_FILE), store.path(NOISE_TABLE_FILE))

"""The files of a sweep directory (DIR must be on shared storage for multi-node clusters):

    sweep.yaml          the validated sweep (base: base_config.yaml) - what `--resume DIR` reads
    base_config.yaml    the resolved base training config (overrides applied)
    noise_table.csv     made ONCE here and used by every trial, so trials differ only in their parameters
    trials/<trial_id>/  each trial's training run dir (config.yaml, metrics.jsonl, checkpoints/, model.pt,
                        results.json when it trained every epoch, starts.log: one line per (re)start)
    tune/               Ray Tune's experiment state (resumable); asha_state.pkl: ASHA's rungs (Tune does not keep them)
    trials.csv, best.yaml, metric_vs_<param>.png, param_importances.png   written when the sweep ends
"""

TUNE_RUN_NAME = "tune"
SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base_config.yaml"
TABLE_FILE = "noise_table.csv"
ASHA_STATE_FILE = "asha_state.pkl"
TRIALS_DIR = "trials"
STARTS_FILE = "starts.log"
LAST_REPORT_FILE = "last_report.json"

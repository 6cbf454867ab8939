"""The names of the files a training run leaves in its run directory, in one place for everything that
writes or reads them (training, resume, audit, the noise and experiment commands, sweeps).

    RUN/config.yaml        the resolved config that ran (tau as resolved for the class count)
    RUN/noise_table.csv    the noisy labels the run trained on
    RUN/metrics.jsonl      one JSON line per epoch
    RUN/results.json       written after the last epoch: protocols, the chosen epoch, timings
    RUN/model.pt           the model a user takes away (train.model_epoch decides its epoch)

No imports, so that any module (the experiment tables, which stay free of torch) may use it."""

CONFIG_FILE = "config.yaml"
NOISE_TABLE_FILE = "noise_table.csv"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
MODEL_FILE = "model.pt"

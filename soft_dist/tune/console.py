"""What a sweep prints: one line when a trial starts, one per epoch it reports, one when it ends.

Ray Tune's own console output (status tables redrawn every 30 s, a result box per trial) is turned off
(RunConfig verbose=0) in favour of this callback, so that a sweep's console reads like `soft-dist train`'s.
"""

from __future__ import annotations

from ray.tune import Callback

from soft_dist.tune.sweep_config import EPOCHS_KEY, Sweep


def trial_number(trial) -> int:
    """Tune's 1-based creation counter, the `trial` column of trials.csv (the experiment tag starts with
    it: "1_epsilon=0.3000,...")."""
    return int(str(trial.experiment_tag).split("_", 1)[0])


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TrialLines(Callback):
    """Prints, for a sweep of ``sweep.num_samples`` trials:

        trial 1/4 (65f0d624) started: tau_relative 0.5, epsilon 0.3, lambda 10
        trial 1/4 epoch 1/2: val_accuracy 0.2402
        trial 4/4 stopped by ASHA after 1 of 2 epochs: val_accuracy 0.1844
        trial 1/4 finished: val_accuracy 0.3240 after 2 epochs
    """

    def __init__(self, sweep: Sweep):
        self.sweep = sweep
        self.names = [d.name for d in sweep.space]

    def _name(self, trial) -> str:
        return f"trial {trial_number(trial)}/{self.sweep.num_samples}"

    def _metric(self, result: dict | None) -> str:
        value = (result or {}).get(self.sweep.metric)
        return f"{self.sweep.metric} {value:.4f}" if isinstance(value, (int, float)) else f"no {self.sweep.metric} reported"

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{name} {_value(trial.config.get(name))}" for name in self.names)
        print(f"{self._name(trial)} ({trial.trial_id}) started: {params}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epochs = result.get(EPOCHS_KEY)
        if epochs is not None:
            print(f"{self._name(trial)} epoch {epochs}/{self.sweep.epochs}: {self._metric(result)}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        epochs = int(last.get(EPOCHS_KEY, 0))
        if 0 < epochs < self.sweep.epochs:
            print(f"{self._name(trial)} stopped by ASHA after {epochs} of {self.sweep.epochs} epochs: "
                  f"{self._metric(last)}", flush=True)
        else:
            print(f"{self._name(trial)} finished: {self._metric(last)} after {epochs} epochs", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        where = trial.error_file or trial.local_path
        print(f"{self._name(trial)} failed; its error is in {where}", flush=True)

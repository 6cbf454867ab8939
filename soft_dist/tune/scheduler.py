"""ASHA whose rungs survive `soft-dist tune --resume`.

Tune restores trials and the searcher from its experiment state, but not the scheduler: a resumed sweep
would start ASHA with empty rungs, so trials reaching a rung after the resume would be compared only with
each other. This subclass writes its state beside the sweep after every decision and reloads it the first
time a restored Tuner uses it."""

from __future__ import annotations

from pathlib import Path

from ray.tune.schedulers import ASHAScheduler


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_path: str | Path, **kwargs):
        super().__init__(**kwargs)
        self._state_path = str(state_path)
        self._state_checked = False

    def _load_once(self) -> None:
        if self._state_checked:
            return
        self._state_checked = True
        if Path(self._state_path).is_file():
            path = self._state_path
            self.restore(path)  # replaces __dict__ entries with the saved ones
            self._state_path, self._state_checked = path, True

    def _save(self) -> None:
        self.save(self._state_path)

    def on_trial_add(self, tune_controller, trial):
        self._load_once()
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._load_once()
        decision = super().on_trial_result(tune_controller, trial, result)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        self._load_once()
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller, trial):
        self._load_once()
        super().on_trial_remove(tune_controller, trial)
        self._save()

"""Label noise: the noise table a run trains with (table.py), published noise lists (lists.py), and
the set-up every caller shares (setup.py). No torch, Ray or DALI here."""

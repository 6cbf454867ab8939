"""`soft-dist audit`: rank a finished run's training samples by how likely their given label is wrong.

scores.py holds the maths (numpy only), run.py reads the run and scores its training split (in this
process or on Ray), report.py writes audit.csv / audit.json / the relabelled noise list, html.py the
contact sheet. Nothing here is imported by training."""

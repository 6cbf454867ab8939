"""CSV cells a spreadsheet would run as formulas are neutralised in every CSV a user opens (predict,
audit, confusion tables), and class names cannot break MODEL_CARD.md."""

import csv

import numpy as np

from soft_dist.safe_text import csv_cell, markdown_text

HOSTILE = ("=HYPERLINK(\"http://x\")", "+1+1", "-cmd", "@SUM(A1)")


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_cells_that_start_like_a_formula_get_an_apostrophe_and_numbers_do_not():
    assert [csv_cell(v) for v in HOSTILE] == ["'" + v for v in HOSTILE]
    assert [csv_cell(v) for v in ("-0.25", "+3", "happy", "", -1.5, 7)] == ["-0.25", "+3", "happy", "", -1.5, 7]
    assert csv_cell("\tx") == "'\tx"


def test_predict_csv_neutralises_paths_class_names_and_errors(tmp_path):
    from soft_dist.serve.prediction_files import PredictionWriter

    classes = ("=bad", "good")
    row = {"path": "=evil.png", "status": "error", "face_found": None, "box": None, "face_prob": None,
           "predicted": None, "probabilities": None, "error": "-not an image"}
    with PredictionWriter(tmp_path / "p.csv", classes) as out:
        out.write([row])
    header, line = _read(tmp_path / "p.csv")
    assert "prob_=bad" in header  # a header cell starting with "p" needs nothing
    assert line[0] == "'=evil.png" and line[-1] == "'-not an image"


def test_audit_and_confusion_csvs_neutralise_class_names_and_sources(tmp_path):
    from soft_dist.audit.report import Audit, write_csv
    from soft_dist.serve.confusion_files import write_confusion_csv

    audit = Audit("teacher_prob", "teacher", idx=np.array([0, 1]), given=np.array([0, 1]),
                  suggested=np.array([1, 0]), score=np.array([-0.5, 0.25]), noise={})
    write_csv(audit, ("@cls", "+cls"), {0: "=a.jpg", 1: "b.jpg"}, tmp_path / "audit.csv")
    rows = _read(tmp_path / "audit.csv")[1:]
    assert "'@cls" in rows[0] and "'+cls" in rows[0] and "'=a.jpg" in rows[0] and "-0.500000" in rows[0]
    write_confusion_csv(np.eye(2, dtype=int), ["=x", "y"], tmp_path / "cm.csv")
    assert _read(tmp_path / "cm.csv")[0][1] == "'=x" and _read(tmp_path / "cm.csv")[1][0] == "'=x"


def test_class_names_are_escaped_in_markdown():
    assert markdown_text("a*b_[c](d)") == "a\\*b\\_\\[c\\]\\(d\\)"
    assert markdown_text("happy") == "happy"

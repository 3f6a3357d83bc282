"""experiments/synthetic/principles/principles.md (pasted into experiments/synthetic/README.md, "Principles side by
side") is the table of the committed runs.csv of that run, regenerated here, so it cannot drift from its rows."""
import csv
import os

from mclcore.studies.synthetic.principles import PRINCIPLE_COLUMNS, principles_table

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "synthetic", "principles")


def test_committed_principles_table_is_regenerated_from_runs_csv():
    with open(os.path.join(ROOT, "runs.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"betavae", "ivae", "mdvae", "compvae", "mmdvae", "qlae", "intervae"}
    assert len(rows) == 7 * 5                                             # 5 seeds per model, every cell reported
    for r in rows:
        r["dz"], r["n_alphabet"], r["seed"] = int(r["dz"]), int(r["n_alphabet"]), int(r["seed"])
        for k, _ in PRINCIPLE_COLUMNS:
            r[k] = float(r[k]) if r[k] != "" else None
    assert principles_table(rows) == open(os.path.join(ROOT, "principles.md")).read()

"""Report the pre-registered EncDiff screening (encdiff_screen.sh, issue #22 item 1): every cell's scores, per-factor
DCI informativeness and training minutes, and where code_use.py was run on a cell its code-use rows (how much the
denoiser uses the code, per factor); seed 0 (n = 1 per cell: screening, no intervals, no comparison claimed).

    python experiments/disentanglement/encdiff_screen_report.py /tmp/encscreen --results experiments/disentanglement/results/encdiff_screen
    python experiments/disentanglement/encdiff_screen_report.py experiments/disentanglement/results/encdiff_screen --from-results

The first form copies each finished cell's ``metrics.json`` (and ``code_use.json``) and its figures (half-size
JPEGs) into ``RESULTS/<cell>/`` and writes ``RESULTS/table.md``; ``--from-results`` rebuilds the table from such a
folder.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mclcore._io import write_text_atomic  # noqa: E402

from _runs import (CODE_USE_FILE, code_use_table, copy_run, read_json, report_args,  # noqa: E402  (here)
                   runs_by_seed, train_minutes)
from collect_table1 import copy_figures  # noqa: E402

CELLS = ("base", "l1", "attn16", "attn16-l1")        # encdiff_screen.sh's order
RUN = "encdiff-shapes3d-cpu-smoke-seed0"


def table(cells: dict, uses: dict | None = None) -> str:
    """The table of every registered cell; ``uses`` ({cell: code_use.json dict}) adds the code-use rows."""
    factors = list(dict.fromkeys(f for m in cells.values() for f in m.get("dci_informativeness_per_factor", {})))
    lines = ["EncDiff screening (encdiff_screen.sh, pre-registered), Shapes3D twin, seed 0, schedule 1000 / 4000 / 600 "
             "steps, evaluation at eval.sample_scale = 0.1 (cpu-long's). n = 1 per cell: it says what a next preset "
             "tries, not which option is better.", "",
             "| cell | FactorVAE | DCI dis. | DCI inf. | " + " | ".join(factors) + " | train min |",
             "|---|---|---|---|" + "---|" * len(factors) + "---|"]
    for cell in CELLS:
        if cell not in cells:
            lines.append(f"| {cell} | not finished |" + " |" * (3 + len(factors)))
            continue
        m = cells[cell]
        per = m.get("dci_informativeness_per_factor", {})
        mins = train_minutes(m)
        lines.append(f"| {cell} | {m['factorvae']:.3f} | {m['dci']:.3f} | {m['dci_informativeness']:.3f} | "
                     + " | ".join(f"{per[f]:.3f}" if f in per else "–" for f in factors)
                     + f" | {'–' if mins is None else f'{mins:.1f}'} |")
    if uses:
        lines += ["", *code_use_table({cell: [uses[cell]] for cell in CELLS if cell in uses}, factors, "cell")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    a = report_args(__doc__.split("\n")[0], "encdiff_screen.sh's OUT, or a --results folder with --from-results",
                    argv)
    found = {cell: runs_by_seed(os.path.join(a.root, cell) if a.from_results else os.path.join(a.root, cell, RUN))
             for cell in CELLS}
    cells = {cell: runs[0] for cell, runs in found.items() if 0 in runs}     # {cell: (folder, metrics)}
    if not cells:
        print(f"root: no finished screening cell under {a.root!r}", file=sys.stderr)
        return 2
    try:
        uses = {cell: u for cell, (run, _) in cells.items() if (u := read_json(run, CODE_USE_FILE))}
    except ValueError as err:           # a stale measurement file (_runs.read_json)
        print(err, file=sys.stderr)
        return 2
    text = table({cell: m for cell, (_, m) in cells.items()}, uses)
    if a.results and not a.from_results:
        for cell, (run, _) in cells.items():
            copy_run(run, os.path.join(a.results, cell), ("metrics.json", CODE_USE_FILE))
            copy_figures(run, os.path.join(a.results, cell, "figures"))
        write_text_atomic(os.path.join(a.results, "table.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

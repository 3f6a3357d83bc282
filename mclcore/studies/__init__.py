"""The paper's studies, each a package split by concern (see README "Layout"):

* ``config.py``: the typed config tree of a run (dataclasses, documented once) and its presets;
* ``run.py`` (plus helpers such as ``data.py``): build, train through :mod:`mclcore.train.loop`, evaluate;
* ``report.py``: tables and figures from finished runs; the paper's numbers live here and only here, and a report
  module imports no training code;
* ``cli.py``: the command line (``mcl synthetic``, or the study's entry of ``mcl train``).

Studies import the library (ops, losses, models, data, metrics, mechanism, train); the library never imports a
study (tests/test_layout.py checks this). A new study adds a package here and one line to the ``mcl`` command
(``mclcore/cli.py``) or to ``mcl train``'s ``TRAINERS`` (``mclcore/studies/train_cli.py``).
"""

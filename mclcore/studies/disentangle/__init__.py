"""Concept disentanglement (paper section 5.2, App. D.2/D.4, Tables 1 and 6, Figs. 6, 8, 9).

* :mod:`.config`: the run's typed config (one dataclass per component, ``mcl`` an MCLConfig), ``PRESETS`` and
  :func:`~.config.build_config`;
* :mod:`.run`: the study object of :mod:`mclcore.train.loop` (models, phases, optimisers, one step) and ``train``;
* :mod:`.evaluate` (with :mod:`.fid` and :mod:`.figures`): Table 1 metrics, Table 6 generation quality, figures;
* :mod:`.report`: the paper's numbers and the tables from finished runs (no training code);
* :mod:`.cli`: the ``mcl train {mddiff,encdiff,betavae,factorvae,btcvae}`` entry.

Nothing is imported here, so ``import mclcore.studies.disentangle.report`` stays light.
"""

"""The action-conditioned world model study (paper section 5.3, App. D.5, Table 2, Fig. 7).

* :mod:`.config`: the run's config tree (one dataclass per component, ``mcl`` = :class:`~mclcore.losses.mcl.MCLConfig`)
  and the ``gpu`` / ``cpu-smoke`` presets;
* :mod:`.data`: the training set and evaluation splits (simulator episodes, episode files, random tensors);
* :mod:`.run`: the study object of :func:`mclcore.train.loop.train` (phases ``autoencoder`` then ``dynamics``);
* :mod:`.evaluate`: rollouts and the Table 2 metrics; :mod:`.probe`: the optional task-success probe;
* :mod:`.report`: Table 2 and the rollout figures from finished runs (``python -m mclcore.studies.worldmodel.report``);
* :mod:`.cli`: ``mcl train worldmodel``.

Nothing is imported here, so the report can be used without loading the training code.
"""

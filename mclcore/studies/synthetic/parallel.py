"""Units of the synthetic study on several worker processes (``StudyConfig.workers > 1``).

A unit (one model on one cell, all its seeds stacked) is the scheduling grain: each worker trains whole units
with ``study.threads`` threads, and every unit writes its own checkpoint and record exactly as in the serial path
(:func:`mclcore.studies.synthetic.run.run_study`), so the results do not depend on the number of workers and a
killed parallel run resumes like a serial one. Spawned, not forked: the parent may hold OpenMP threads. Under
torchrun each rank runs its own pool over its share of the units (``workers`` processes per rank).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

__all__ = ["run_parallel"]


def run_parallel(study, units: list, records: list, job, out: str, device: str, mcl_device: str, bar,
                 finished, todo: list[int] | None = None) -> None:
    """Run the units ``todo`` (indices into ``units``; default: those whose ``records[i]`` is None) on
    ``study.workers`` processes, the costliest first (a final MD-VAE+MCL unit waits for its tuning unit's record,
    so ``todo`` must hold a pending tuning unit together with its final unit: under torchrun each rank passes its
    share, :func:`mclcore.studies.synthetic.units.rank_shares`). ``job(study, unit, out, device) -> record`` runs
    in the worker (a module-level function); ``records`` is filled in place and ``finished(i)`` called in the
    parent after unit i; a worker's error is raised here, after the other running units are cancelled or finish."""
    index = {u.uid: i for i, u in enumerate(units)}
    if todo is None:
        todo = [i for i in range(len(units)) if records[i] is None]
    waiting = sorted((units[i] for i in todo), key=lambda u: -u.cost(study))

    def ready(u) -> bool:
        if u.model == "mdvae_mcl" and u.lambdas is None:
            return records[index[u.uid + "-tune"]] is not None
        return True

    with cf.ProcessPoolExecutor(study.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running: dict = {}
        try:
            while waiting or running:
                for u in [u for u in waiting if ready(u)][: study.workers - len(running)]:
                    waiting.remove(u)
                    dev = mcl_device if u.model == "mdvae_mcl" else device
                    running[pool.submit(job, study, u, out, dev)] = u
                bar.set_postfix_str(", ".join(u.uid for u in running.values()))
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    u = running.pop(fut)
                    records[index[u.uid]] = fut.result()
                    bar.update(round(u.cost(study)))
                    finished(index[u.uid])
        except BaseException:
            for fut in running:
                fut.cancel()
            raise

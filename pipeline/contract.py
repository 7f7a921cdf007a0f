"""The cadence contract of ``run`` and ``replay``: a file is served only at the cadence it was recorded at.

Every station of the file must report at a cadence some champion has (:func:`pipeline.pretrained.cadence_champions`);
otherwise the command stops with one line naming the file's cadence and the champions', unless ``--resample AGG`` is
given: then each such station is aggregated onto the nearest *coarser* served cadence (the AGG of the readings in
``(t - cadence, t]``, stamped ``t``; see :func:`pipeline.cadence.resample`), and the command says so. Resampling
never makes a finer grid out of a coarser one.
"""

from __future__ import annotations

import sys

import pandas as pd

from forecaster.registry import Registry
from pipeline.cadence import AGGREGATIONS, describe, file_cadences, matching, resample
from pipeline.pretrained import cadence_champions

RESAMPLE_HELP = (f"aggregate stations whose cadence no champion has onto the nearest coarser served cadence that is a "
                 f"whole multiple of theirs: AGG ({', '.join(AGGREGATIONS)}) of each sensor's readings in "
                 f"(t - cadence, t], stamped t on the station's own phase; a step missing any reading is left out. "
                 f"Without it, such a file is refused (exit 2)")


class CadenceError(ValueError):
    """A file's cadence that no champion serves (the command line prints it as one line, exit 2)."""


def served_cadences(registry_root: str, base: str) -> dict[int, str]:
    """Cadence -> champion name, for the registry the service will use (shipped models included)."""
    return cadence_champions(Registry(registry_root), base)


def enforce(records: pd.DataFrame, path: str, served: dict[int, str], agg: str | None, stream=sys.stderr
            ) -> pd.DataFrame:
    """``records`` as the service may take them: unchanged when every station matches a served cadence; else
    resampled with ``agg``, or :class:`CadenceError`."""
    spacings = file_cadences(records)
    have = ", ".join(f"{describe(c)} ({name})" for c, name in sorted(served.items()))
    off = {s: v for s, v in spacings.items() if matching(v, served) is None}
    if not off:
        for c in sorted({matching(v, served) for v in spacings.to_numpy()}):
            print(f"stationcast: {path}: readings every {describe(c)}, served by {served[c]}", file=stream)
        return records
    example, spacing = next(iter(off.items()))
    what = f"{path}: station {example} reports every {describe(spacing)}" + (
        f" (and {len(off) - 1} more station(s) at cadences no champion has)" if len(off) > 1 else "")
    if agg is None:
        raise CadenceError(f"{what}; no champion serves that cadence (champions: {have}); pass --resample AGG "
                           f"({'|'.join(AGGREGATIONS)}) to aggregate it onto a served cadence")
    targets = {}
    for station, v in off.items():
        coarser = [c for c in served if c > v and (c / v) == int(c / v)]
        if not coarser:
            raise CadenceError(f"{path}: station {station} reports every {describe(v)}; no champion's cadence ({have}) "
                               f"is a coarser whole multiple of it (resampling never makes readings finer)")
        targets[station] = min(coarser)
    parts = [records[~records["station"].isin(list(off))]]
    for cadence in sorted(set(targets.values())):
        names = [s for s, c in targets.items() if c == cadence]
        parts.append(resample(records[records["station"].isin(names)], cadence, agg))
        print(f"stationcast: {path}: resampled {len(names)} station(s) from every {describe(off[names[0]])} to every "
              f"{describe(cadence)} ({served[cadence]}): {agg} of each sensor's readings in (t - {describe(cadence)}, "
              f"t], stamped t; steps missing a reading left out", file=stream)
    merged = pd.concat(parts, ignore_index=True)
    return merged.sort_values(["time", "station"], kind="stable").reset_index(drop=True)

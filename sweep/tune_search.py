"""The tune's search, independent of models and MLflow: bisection over the number of float
linears per setting, racing each probe on nested subsets with the non-inferiority gate, and a
confirmation of the winner on the full set.

A probe (a candidate: setting × n most-sensitive linears kept float) is evaluated on the first
rung's units, then the next rung's (a superset), and so on; it stops at the first rung where the
gate decides: ``fail`` drops it, ``pass`` counts as a provisional pass. Undecided on the full set
is not a pass. Candidates are preferred by fewest float linears (the most compressed), so once a
setting passes with n float linears, the others only search n or fewer: a candidate with more
cannot beat the current best.

Every setting's all-quantized probe (no float linear) is raced first: the SQNR ranking needs that
model anyway, a pass there ends the search for everything else, and its drop orders the settings
for the bisections, most promising first, so that the first passing setting bounds the others'
searches as early as possible. The provisional winner (fewest float linears; among equals the
best metric) is confirmed on the full set; if it fails there, the next one is confirmed, and a
setting whose probe failed confirmation moves up by one float linear.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from eval.noninferiority import FAIL, PASS, Verdict
from sweep.workbench import Setting


@dataclass(frozen=True)
class Candidate:
    """A setting with its ``n_float`` most sensitive linears kept in float."""

    setting: Setting
    n_float: int

    @property
    def key(self) -> str:
        return f"{self.setting.label}-float{self.n_float}"


class Judge(Protocol):
    """Evaluates a candidate on the first ``units`` units (recording it) and gates it."""

    def verdict(self, candidate: Candidate, units: int) -> Verdict: ...


@dataclass(frozen=True)
class RaceResult:
    candidate: Candidate
    status: str  # PASS | FAIL | UNDECIDED
    units: int  # the rung where it stopped
    verdict: Verdict


@dataclass
class SearchOutcome:
    """The confirmed winner (None: nothing passed) and every race, in order."""

    winner: RaceResult | None
    races: list[RaceResult] = field(default_factory=list)


def race(judge: Judge, candidate: Candidate, rungs: Sequence[int], to_full: bool = False) -> RaceResult:
    """Evaluate ``candidate`` rung by rung until the gate decides (or, ``to_full``, until the
    last rung unless it fails earlier)."""
    verdict = None
    for units in rungs:
        verdict = judge.verdict(candidate, units)
        if verdict.status == FAIL or (verdict.status == PASS and not to_full):
            return RaceResult(candidate, verdict.status, units, verdict)
    assert verdict is not None
    return RaceResult(candidate, verdict.status, rungs[-1], verdict)


def smallest_passing(
    judge: Judge, setting: Setting, lo: int, hi: int, rungs: Sequence[int], races: list[RaceResult]
) -> RaceResult | None:
    """The passing probe with the fewest float linears in [lo, hi] by bisection (passing assumed
    monotone in the number of float linears), or None when even ``hi`` does not pass."""
    if lo > hi:
        return None
    best = None
    while lo < hi:
        mid = (lo + hi) // 2
        result = race(judge, Candidate(setting, mid), rungs)
        races.append(result)
        if result.status == PASS:
            hi, best = mid, result
        else:
            lo = mid + 1
    if best is None or best.candidate.n_float != lo:
        result = race(judge, Candidate(setting, lo), rungs)
        races.append(result)
        best = result if result.status == PASS else None
    return best


def search(judge: Judge, settings: Sequence[Setting], max_float: int, rungs: Sequence[int]) -> SearchOutcome:
    """Every setting's all-quantized probe, then bisection per setting, most promising first
    (bounded by the best so far), then confirmation on the full set."""
    outcome = SearchOutcome(None)
    screened = {setting: race(judge, Candidate(setting, 0), rungs) for setting in settings}
    outcome.races.extend(screened.values())
    provisional = {setting: r for setting, r in screened.items() if r.status == PASS}
    bound = 0 if provisional else max_float
    remaining = [setting for setting in settings if setting not in provisional]
    for setting in sorted(remaining, key=lambda s: screened[s].verdict.drop):  # stable: ties keep order
        found = smallest_passing(judge, setting, 1, bound, rungs, outcome.races)
        if found is not None:
            provisional[setting] = found
            bound = min(bound, found.candidate.n_float)
    while provisional:
        fewest = min(r.candidate.n_float for r in provisional.values())
        group = [r for r in provisional.values() if r.candidate.n_float == fewest]
        confirmed = []
        for result in group:
            full = race(judge, result.candidate, rungs, to_full=True)
            outcome.races.append(full)
            if full.status == PASS:
                confirmed.append(full)
            elif fewest < max_float:  # one more float linear for this setting
                nxt = race(judge, Candidate(result.candidate.setting, fewest + 1), rungs)
                outcome.races.append(nxt)
                if nxt.status == PASS:
                    provisional[result.candidate.setting] = nxt
                    continue
                del provisional[result.candidate.setting]
            else:
                del provisional[result.candidate.setting]
        if confirmed:
            outcome.winner = min(confirmed, key=lambda r: r.verdict.drop)  # equal compression: best metric
            return outcome
    return outcome

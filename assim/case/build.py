"""Build a validated case into an `Experiment`: the one case form whose tables the case has does the work.

A form is a typed strategy with `applies(case)`, `check(case)` (construct everything, no truth run) and
`build(case, sample)`. `FORMS` is their registry, tried in order: a [data] table (fields, grid, mask and
samples from a dataset: `assim.case.data`), observations.file (real observations, no truth:
`assim.case.files`), else a twin of the model's preset initial state (`assim.case.twin`). A new form
is one module plus its entry here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from assim.case import data, files, twin
from assim.case.config import Case
from assim.case.experiment import Experiment
from assim.case.solve import run as run  # noqa: F401  (build, then run)


class AbstractCaseForm(abc.ABC):
    """How one kind of case turns its tables into an `Experiment`."""

    @abc.abstractmethod
    def applies(self, case: Case) -> bool:
        """Whether the case is of this form."""

    @abc.abstractmethod
    def check(self, case: Case) -> None:
        """Construct grid, model, B, solver and network (no truth run) so that their own checks apply."""

    @abc.abstractmethod
    def build(self, case: Case, sample: int) -> Experiment:
        """The experiment of window `sample` (0: the case's own window; i ≥ 1: training and test windows)."""


@dataclass(frozen=True)
class DataForm(AbstractCaseForm):
    """Truth, grid, mask, background and B from a dataset's samples ([data])."""

    def applies(self, case: Case) -> bool:
        return case.data is not None

    def check(self, case: Case) -> None:
        data.check(case)

    def build(self, case: Case, sample: int) -> Experiment:
        return data.build(case, sample)


@dataclass(frozen=True)
class FileForm(AbstractCaseForm):
    """Real observations read from observations.file: no truth, no twin."""

    def applies(self, case: Case) -> bool:
        return case.observations.file is not None

    def check(self, case: Case) -> None:
        files.check(case)

    def build(self, case: Case, sample: int) -> Experiment:
        return files.build(case, sample)


@dataclass(frozen=True)
class TwinForm(AbstractCaseForm):
    """A twin experiment from the model's preset initial state."""

    def applies(self, case: Case) -> bool:
        return True

    def check(self, case: Case) -> None:
        twin.check(case)

    def build(self, case: Case, sample: int) -> Experiment:
        return twin.build(case, sample)


FORMS: tuple[AbstractCaseForm, ...] = (DataForm(), FileForm(), TwinForm())


def form(case: Case) -> AbstractCaseForm:
    """The first form in `FORMS` that applies to the case."""
    return next(f for f in FORMS if f.applies(case))


def check(case: Case) -> None:
    """Construct the case's objects without running its truth: every section's own checks apply."""
    form(case).check(case)


def build(case: Case, sample: int = 0) -> Experiment:
    """Grid, model, truth, observations, background and solver of window `sample` of a validated case."""
    return form(case).build(case, sample)

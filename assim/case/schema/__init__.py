"""The case-file schema: one pydantic class per table; a tagged union of classes per `kind`, each building its object.

`assim.case.config.Case` assembles the tables; `assim.case.config.load_case` reads, overrides, validates and
checks a case. A union (e.g. `ModelConfig`) is the registry of its kinds: `assim list` reads it, and a
new kind is one class here plus its entry in the union.
"""

from assim.case.schema.base import Strict as Strict
from assim.case.schema.covariances import BackgroundConfig as BackgroundConfig
from assim.case.schema.covariances import DiagonalB as DiagonalB
from assim.case.schema.covariances import DiffusionB as DiffusionB
from assim.case.schema.covariances import SpectralB as SpectralB
from assim.case.schema.data import ClimatologyB as ClimatologyB
from assim.case.schema.data import DataConfig as DataConfig
from assim.case.schema.data import FieldSourceConfig as FieldSourceConfig
from assim.case.schema.data import SampleSelection as SampleSelection
from assim.case.schema.data import WindConfig as WindConfig
from assim.case.schema.data import file_tables as file_tables
from assim.case.schema.data import package_file as package_file
from assim.case.schema.data import resolve_path as resolve_path
from assim.case.schema.discovery import DiscoverConfig as DiscoverConfig
from assim.case.schema.discovery import EveryStepTiming as EveryStepTiming
from assim.case.schema.discovery import GaussianPriorConfig as GaussianPriorConfig
from assim.case.schema.discovery import LogNormalPriorConfig as LogNormalPriorConfig
from assim.case.schema.discovery import PriorConfig as PriorConfig
from assim.case.schema.discovery import SubWindowTiming as SubWindowTiming
from assim.case.schema.discovery import TimingConfig as TimingConfig
from assim.case.schema.discovery import TruthConfig as TruthConfig
from assim.case.schema.discovery import WeakConstraintConfig as WeakConstraintConfig
from assim.case.schema.grid import CyclingConfig as CyclingConfig
from assim.case.schema.grid import GridConfig as GridConfig
from assim.case.schema.grid import OutputsConfig as OutputsConfig
from assim.case.schema.grid import TimeConfig as TimeConfig
from assim.case.schema.models import AdvectionDiffusionModel as AdvectionDiffusionModel
from assim.case.schema.models import Bump as Bump
from assim.case.schema.models import BurgersModel as BurgersModel
from assim.case.schema.models import DiffusionModel as DiffusionModel
from assim.case.schema.models import Lorenz96Model as Lorenz96Model
from assim.case.schema.models import ModelConfig as ModelConfig
from assim.case.schema.models import PythonModel as PythonModel
from assim.case.schema.models import ShallowWaterModel as ShallowWaterModel
from assim.case.schema.observations import NetworkConfig as NetworkConfig
from assim.case.schema.observations import ObservationsConfig as ObservationsConfig
from assim.case.schema.observations import RandomFraction as RandomFraction
from assim.case.schema.observations import Regular as Regular
from assim.case.schema.observations import Stations as Stations
from assim.case.schema.observations import StationsAndTracks as StationsAndTracks
from assim.case.schema.solvers import GaussNewtonSolver as GaussNewtonSolver
from assim.case.schema.solvers import HypergradientConfig as HypergradientConfig
from assim.case.schema.solvers import (
    ImplicitHypergradientConfig as ImplicitHypergradientConfig,
)
from assim.case.schema.solvers import (
    LevenbergMarquardtSolver as LevenbergMarquardtSolver,
)
from assim.case.schema.solvers import (
    OneStepHypergradientConfig as OneStepHypergradientConfig,
)
from assim.case.schema.solvers import SolverConfig as SolverConfig
from assim.case.schema.solvers import TrainingConfig as TrainingConfig
from assim.case.schema.solvers import (
    TruncatedHypergradientConfig as TruncatedHypergradientConfig,
)
from assim.case.schema.solvers import (
    UnrolledHypergradientConfig as UnrolledHypergradientConfig,
)
from assim.case.schema.solvers import UnrolledSolver as UnrolledSolver

"""The case-file schema: one pydantic class per table; a tagged union of classes per `kind`, each building its object.

`assim.config.Case` assembles the tables; `assim.config.load_case` reads, overrides, validates and
checks a case. A union (e.g. `ModelConfig`) is the registry of its kinds: `assim list` reads it, and a
new kind is one class here plus its entry in the union.
"""

from assim.schema.base import Strict as Strict
from assim.schema.covariances import BackgroundConfig as BackgroundConfig
from assim.schema.covariances import DiagonalB as DiagonalB
from assim.schema.covariances import DiffusionB as DiffusionB
from assim.schema.covariances import SpectralB as SpectralB
from assim.schema.data import ClimatologyB as ClimatologyB
from assim.schema.data import DataConfig as DataConfig
from assim.schema.data import FieldSourceConfig as FieldSourceConfig
from assim.schema.data import SampleSelection as SampleSelection
from assim.schema.data import WindConfig as WindConfig
from assim.schema.data import file_tables as file_tables
from assim.schema.data import package_file as package_file
from assim.schema.data import resolve_path as resolve_path
from assim.schema.discovery import DiscoverConfig as DiscoverConfig
from assim.schema.discovery import EveryStepTiming as EveryStepTiming
from assim.schema.discovery import GaussianPriorConfig as GaussianPriorConfig
from assim.schema.discovery import LogNormalPriorConfig as LogNormalPriorConfig
from assim.schema.discovery import PriorConfig as PriorConfig
from assim.schema.discovery import SubWindowTiming as SubWindowTiming
from assim.schema.discovery import TimingConfig as TimingConfig
from assim.schema.discovery import TruthConfig as TruthConfig
from assim.schema.discovery import WeakConstraintConfig as WeakConstraintConfig
from assim.schema.grid import CyclingConfig as CyclingConfig
from assim.schema.grid import GridConfig as GridConfig
from assim.schema.grid import OutputsConfig as OutputsConfig
from assim.schema.grid import TimeConfig as TimeConfig
from assim.schema.models import AdvectionDiffusionModel as AdvectionDiffusionModel
from assim.schema.models import Bump as Bump
from assim.schema.models import BurgersModel as BurgersModel
from assim.schema.models import DiffusionModel as DiffusionModel
from assim.schema.models import Lorenz96Model as Lorenz96Model
from assim.schema.models import ModelConfig as ModelConfig
from assim.schema.models import PythonModel as PythonModel
from assim.schema.models import ShallowWaterModel as ShallowWaterModel
from assim.schema.observations import NetworkConfig as NetworkConfig
from assim.schema.observations import ObservationsConfig as ObservationsConfig
from assim.schema.observations import RandomFraction as RandomFraction
from assim.schema.observations import Regular as Regular
from assim.schema.observations import Stations as Stations
from assim.schema.observations import StationsAndTracks as StationsAndTracks
from assim.schema.solvers import GaussNewtonSolver as GaussNewtonSolver
from assim.schema.solvers import HypergradientConfig as HypergradientConfig
from assim.schema.solvers import ImplicitHypergradientConfig as ImplicitHypergradientConfig
from assim.schema.solvers import LevenbergMarquardtSolver as LevenbergMarquardtSolver
from assim.schema.solvers import OneStepHypergradientConfig as OneStepHypergradientConfig
from assim.schema.solvers import SolverConfig as SolverConfig
from assim.schema.solvers import TrainingConfig as TrainingConfig
from assim.schema.solvers import TruncatedHypergradientConfig as TruncatedHypergradientConfig
from assim.schema.solvers import UnrolledHypergradientConfig as UnrolledHypergradientConfig
from assim.schema.solvers import UnrolledSolver as UnrolledSolver

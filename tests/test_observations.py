"""Observation operators and sets: interpolation accuracy, wrapping, masking, bad input (adjoint, transpose, vmap
and jit contracts of every operator: tests/test_contracts.py over tests/registry.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from assim.errors import GridMismatchError, ObservationError
from assim.observations.observation_set import ObservationSet
from assim.observations.operators import (
    GriddedObservation,
    StationObservation,
    SwathObservation,
    steps_from_times,
)
from models import CartesianGrid, LatLonGrid, Neumann, Periodic

PERIODIC = CartesianGrid((8, 10), (2.0, 1.0), Periodic(), origin=(-1.0, 0.0))
WALLED = CartesianGrid((8, 10), (2.0, 1.0), Neumann())
LINE = CartesianGrid((12,), (3.0,), Periodic())
LATLON = LatLonGrid(np.arange(-80.0, 81.0, 20.0), np.arange(0.0, 360.0, 30.0), radius=1.0)
RNG = np.random.default_rng(0)


def uniform_points(grid, n, pad=0.0):
    lo = np.asarray(grid.origin) - pad
    hi = np.asarray(grid.origin) + np.asarray(grid.lengths) + pad
    return RNG.uniform(lo, hi, size=(n, grid.ndim))


def latlon_points(n):
    return np.stack([RNG.uniform(-89.0, 89.0, n), RNG.uniform(-180.0, 540.0, n)], axis=-1)


@pytest.mark.parametrize("grid", [PERIODIC, LATLON], ids=["cartesian", "latlon"])
def test_each_swath_time_reads_its_own_stations(grid):
    n_t, n_o = 3, 7
    if isinstance(grid, LatLonGrid):
        points = np.stack([latlon_points(n_o) for _ in range(n_t)])
    else:
        points = np.stack([uniform_points(grid, n_o) for _ in range(n_t)])
    op = SwathObservation(grid, points)
    states = jax.random.normal(jax.random.PRNGKey(3), (n_t,) + grid.shape)
    # the same as a StationObservation built on that time's points, by window and by time
    per_time = [StationObservation(grid, points[t]) for t in range(n_t)]
    np.testing.assert_allclose(op.apply_window(states), jnp.stack([h.apply(s) for h, s in zip(per_time, states)]))
    np.testing.assert_allclose(op.apply(states[1], 1), per_time[1].apply(states[1]))
    y = jax.random.normal(jax.random.PRNGKey(4), (n_o,))
    np.testing.assert_allclose(op.adjoint(y, 1), per_time[1].adjoint(y))


def test_bilinear_interpolation_is_exact_for_linear_fields_inside_walls():
    y, x = np.meshgrid(*WALLED.coords().values(), indexing="ij")
    f = jnp.asarray(0.3 + 1.7 * x - 0.9 * y)
    hy, hx = WALLED.spacing
    pts = RNG.uniform([hy / 2, hx / 2], [2.0 - hy / 2, 1.0 - hx / 2], size=(25, 2))  # between first and last centres
    expected = 0.3 + 1.7 * pts[:, 1] - 0.9 * pts[:, 0]
    np.testing.assert_allclose(StationObservation(WALLED, pts).apply(f), expected, rtol=1e-13)


def test_periodic_wrap_on_cartesian_and_longitude():
    # Cartesian: a point a quarter cell beyond the last x-centre reads 3/4 last + 1/4 first cell
    f = jnp.zeros(PERIODIC.shape).at[3, -1].set(1.0).at[3, 0].set(5.0)
    yc, xc = PERIODIC.coords().values()
    h = PERIODIC.spacing[1]
    for x in (xc[-1] + h / 4, xc[-1] + h / 4 - 1.0, xc[-1] + h / 4 + 3.0):  # same point, shifted by periods
        np.testing.assert_allclose(StationObservation(PERIODIC, [[yc[3], x]]).apply(f), [0.75 * 1 + 0.25 * 5])
    # lat-lon: lon 345° lies halfway between the 330° and 0° columns; −15° and 705° are the same point
    g = jnp.zeros(LATLON.shape).at[4, -1].set(2.0).at[4, 0].set(4.0)
    for lon in (345.0, -15.0, 705.0):
        np.testing.assert_allclose(StationObservation(LATLON, [[0.0, lon]]).apply(g), [3.0])
    # interpolation in latitude and longitude is exact for fields linear in both (away from the wrap)
    lat, lon = np.meshgrid(LATLON.lat, LATLON.lon, indexing="ij")
    pts = np.stack([RNG.uniform(-80, 80, 20), RNG.uniform(0, 330, 20)], axis=-1)
    lin = jnp.asarray(1.0 + 0.02 * lat - 0.005 * lon)
    np.testing.assert_allclose(StationObservation(LATLON, pts).apply(lin), 1.0 + 0.02 * pts[:, 0] - 0.005 * pts[:, 1])


def test_outside_stations_are_flagged_and_read_nothing():
    pts = np.array([[0.5, 0.5], [-0.1, 0.5], [0.5, 1.2], [np.nan, 0.2], [2.0, 1.0]])
    op = StationObservation(WALLED, pts)
    np.testing.assert_array_equal(op.inside, [True, False, False, False, True])
    assert float(jnp.abs(op.apply(jnp.ones(WALLED.shape))[~np.asarray(op.inside)]).max()) == 0.0
    # lat-lon: latitudes beyond the last row's outer face are outside (no polar rows here)
    ll = StationObservation(LATLON, [[89.0, 10.0], [85.0, 10.0], [-95.0, 0.0]])
    np.testing.assert_array_equal(ll.inside, [True, True, False])
    closed = LatLonGrid(np.arange(-60.0, 61.0, 30.0), np.arange(0.0, 90.0, 30.0), radius=1.0)  # regional: lon walls
    np.testing.assert_array_equal(StationObservation(closed, [[0.0, 70.0], [0.0, 80.0]]).inside, [True, False])


def test_observation_set_masks_and_counts_bad_observations():
    pts = np.array([[0.5, 0.5], [1.0, 0.3], [-0.5, 0.5], [1.5, 0.9], [0.2, 0.1], [1.9, 0.6]])
    op = StationObservation(WALLED, pts)
    values = np.array([[1.0, np.nan, 2.0, 3.0, np.inf, 4.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    errors = np.array([[0.1, 0.1, 0.1, -1.0, 0.1, 0.1], [0.1, 0.0, np.nan, 0.1, 0.1, np.inf]])
    obs = ObservationSet(op, (1, 3), values, errors)
    assert obs.report.as_dict() == {
        "n_total": 12, "n_valid": 5, "n_outside": 2, "n_nonfinite": 2, "n_bad_error": 3, "n_masked": 0,
    }  # fmt: skip
    expected = np.array([[1, 0, 0, 0, 0, 1], [1, 0, 0, 1, 1, 0]], bool)
    np.testing.assert_array_equal(obs.mask, expected)
    assert np.all(np.isfinite(obs.values)) and np.all(np.asarray(obs.values)[~expected] == 0)
    traj = jnp.full((4,) + WALLED.shape, jnp.nan).at[1].set(2.0).at[3].set(-1.0)
    d = obs.normalised_departures(traj)  # NaN states at unobserved steps never reach the departures
    model_eq = np.array([[2.0], [-1.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        np.testing.assert_allclose(np.asarray(d)[expected], ((values - model_eq) / errors)[expected])
    assert np.all(np.asarray(d)[~expected] == 0)
    held_out = obs.with_mask(np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], bool))
    assert held_out.report.as_dict()["n_valid"] == 4 and held_out.report.as_dict()["n_masked"] == 1
    assert not bool(held_out.mask[0, 5])


def test_all_unusable_observations_raise():
    with pytest.raises(ObservationError, match="all 2 observations are unusable"):
        ObservationSet(GriddedObservation(WALLED, [0, 1]), (0,), [[np.nan, np.nan]], 1.0)


def test_operator_on_the_wrong_grid_raises():
    op = GriddedObservation(WALLED, [0, 5, 9])
    with pytest.raises(GridMismatchError, match="rebuild the observation operator"):
        op.apply(jnp.zeros((10, 10)))
    swath = SwathObservation(WALLED, np.zeros((2, 3, 2)) + 0.5)
    with pytest.raises(GridMismatchError, match=r"shape \(8, 10\)"):
        swath.apply_window(jnp.zeros((2, 8, 8)))
    with pytest.raises(ObservationError, match="flat indices must lie in"):
        GriddedObservation(WALLED, [0, 80])
    with pytest.raises(ObservationError, match=r"shape \(n_stations, 2\)"):
        StationObservation(WALLED, np.zeros((4, 3)))
    with pytest.raises(ObservationError, match=r"\(n_times, n_obs\) = \(2, 3\)"):
        ObservationSet(op, (0, 1), np.zeros((3, 3)), 1.0)
    with pytest.raises(ObservationError, match="one step per swath time"):
        ObservationSet(swath, (0, 1, 2), np.zeros((3, 3)), 1.0)


def test_component_of_a_pytree_state():
    op = GriddedObservation(WALLED, [3, 7], component=1)
    state = (jnp.zeros(WALLED.shape), jnp.arange(80.0).reshape(WALLED.shape))
    np.testing.assert_allclose(op.apply(state), [3.0, 7.0])
    _, vjp = jax.vjp(op.apply, state)
    (ct,) = vjp(jnp.array([1.0, 2.0]))
    assert float(jnp.abs(ct[0]).max()) == 0.0
    np.testing.assert_allclose(ct[1], op.adjoint(jnp.array([1.0, 2.0])))
    stacked = jnp.stack([jnp.zeros((2,) + WALLED.shape), jnp.ones((2,) + WALLED.shape).at[1].set(5.0)])
    np.testing.assert_allclose(op.apply_window(stacked), [[0.0, 0.0], [5.0, 5.0]])  # (time, component, y, x)
    with pytest.raises(ObservationError, match="component=<index or name>"):
        GriddedObservation(WALLED, [3, 7]).apply(state)


def test_time_sampling_bins_to_nearest_step():
    assert steps_from_times([0.0, 0.24, 0.26, 1.0], dt=0.1, n_steps=10) == (0, 2, 3, 10)
    assert steps_from_times([5.0, 5.5], dt=0.5, n_steps=2, t0=5.0) == (0, 1)
    with pytest.raises(ObservationError, match="outside the window"):
        steps_from_times([1.2], dt=0.1, n_steps=10)

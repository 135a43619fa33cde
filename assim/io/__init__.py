"""The edges: CF netCDF sources and grids, observation files, analysis output, figures and the xarray API."""

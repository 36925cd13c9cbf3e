"""Volumes in and out: zarr and OME-Zarr arrays, TIFF and HDF5 inputs, the label image, resampling,
the chunk cache and synthetic volumes."""

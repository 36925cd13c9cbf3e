"""The napari plugin (``pip install -e ".[napari]"``): a thin layer over the Python API.

* :mod:`.layers` (no Qt): a result group, or an OME-Zarr image with this project's labels, as
  napari layer data: the image and the label pyramid (lazy, multiscale), the objects table as
  the labels' ``features``, the block grid, skipped blocks and the seam audit's rejected pairs.
* :mod:`.launch` (no Qt): the config a widget writes, a ``pipeline run`` launched as a detached
  process, its run record and progress lines.
* :mod:`.keep` (no Qt): corrected labels as a new label image of a result, or as training crops.
* :mod:`.widgets`: the dock widgets ("Segment this view", "Run the whole volume", "Edit and keep").

The manifest is ``napari.yaml`` beside this file (entry point ``napari.manifest``).
"""

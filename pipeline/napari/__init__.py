"""The napari plugin (``pip install -e ".[napari]"``): a thin layer over the Python API.

* :mod:`.layers` (no Qt): a result group, or an OME-Zarr image with this project's labels, as
  napari layer data: the image (:mod:`.image`) and the label pyramid (:mod:`.labels`; lazy,
  multiscale), the objects table as the labels' ``features`` (:mod:`.features`), the block grid,
  skipped blocks and the seam audit's rejected pairs (:mod:`.grid`); where a path leads
  (:mod:`.result`) and world coordinates (:mod:`.frame`). ``_reader`` and ``_sample`` are the
  reader and sample data contributions.
* :mod:`.launch` (no Qt): the config a widget writes, a ``pipeline run`` launched as a detached
  process (:mod:`.detach`), its run record and progress lines.
* :mod:`.keep` (no Qt): corrected labels as a new label image of a result, or as training crops.
* The dock widgets: :mod:`.segment_widget` ("Segment this view"), :mod:`.run_widget` ("Run the
  whole volume"), :mod:`.keep_widget` ("Edit and keep"), :mod:`.tools_widget` (all three as tabs);
  what they share is :mod:`.widget_parts`
  (layer chooser, settings form, controls) and :mod:`.viewer` (no Qt: what a layer records, the
  box the canvas shows).

The manifest is ``napari.yaml`` beside this file (entry point ``napari.manifest``).
"""

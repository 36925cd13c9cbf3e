"""``connectivity``: connected components of the graph whose nodes are foreground voxels
and whose edges join face neighbours with embedding distance below ``threshold``.

The rule looks only at pairs of neighbouring voxels, so applying the same rule to the
voxel pairs across block faces makes the blockwise result identical to the
whole-volume result (with exact stitched embeddings). Faces carry voxel embeddings.
"""

from __future__ import annotations

import numpy as np

from .base import Method, register
from .faces import face_pairs
from .kernels import connectivity_fragments


@register
class Connectivity(Method):
    name = "connectivity"
    rank = 0
    exact = True
    cpu_backend = "numba"
    backends = ("numba", "torch", "numpy")

    def fragments(self, emb: np.ndarray, fg: np.ndarray) -> np.ndarray:
        p = self.params
        if self.backend == "numpy":
            return connectivity_fragments(emb, fg, p.foreground_threshold, p.threshold)
        if self.backend == "numba":
            from . import compiled_voxels as cv

            e3, f3 = cv.as_3d(emb, fg.ndim), cv.as_3d(fg, fg.ndim)
            fg_threshold = cv.same_type(p.foreground_threshold, fg)
            return cv.embedding_components(e3, f3, fg_threshold, float(p.threshold) ** 2)[0].reshape(fg.shape)
        from .torch_kernels import connectivity_fragments as torch_fragments

        return torch_fragments(*self.tensors(emb, fg), p.foreground_threshold, p.threshold).cpu().numpy()

    def face_evidence(self, emb: np.ndarray, local: np.ndarray) -> np.ndarray:
        return emb

    def accept(self, lab_a: np.ndarray, lab_b: np.ndarray, ev_a: np.ndarray, ev_b: np.ndarray) -> np.ndarray:
        return face_pairs(lab_a, lab_b, ev_a, ev_b, self.params.threshold)[0]


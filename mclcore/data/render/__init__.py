"""Procedural renderers: offline twins of the benchmark datasets with their exact factor grids.

* :class:`Shapes3DRender` - floor/wall/object hues, scale, 4 shapes, 15 orientations (numpy ray caster).
* :class:`DSpritesRender` - square/ellipse/heart, 6 scales, 40 orientations, 32x32 positions (binary sprites).
* :class:`MPI3DRender` - object colour/shape/size, camera height, background colour, two arm axes.
* :class:`Cars3DRender` - 4 elevations x 24 azimuths x 183 parametric car meshes (numpy software rasterizer).

Each twin takes its factor grid from its dataset's module (``mclcore.data.datasets.<name>.SPEC``), which registers
it as the dataset's twin (``get_dataset(name)`` with no file). All output uint8 (N, 64, 64, 3), deterministic by
index. ``python -m mclcore.data.render --grid docs/`` writes a
sample grid PNG per dataset.
"""
from mclcore.data.render.cars3d import Cars3DRender
from mclcore.data.render.dsprites import DSpritesRender
from mclcore.data.render.mpi3d import MPI3DRender
from mclcore.data.render.shapes3d import Shapes3DRender

RENDERERS = {"shapes3d": Shapes3DRender, "dsprites": DSpritesRender, "mpi3d": MPI3DRender, "cars3d": Cars3DRender}

__all__ = ["Shapes3DRender", "DSpritesRender", "MPI3DRender", "Cars3DRender", "RENDERERS"]

from mclcore.losses.mmd import mmd, sample_prior  # noqa: F401  (MMD between samples; issue #23)
from mclcore.losses.comp_contrast import (  # noqa: F401  (compositional contrast regulariser; issue #23)
    CompContrast, MLPDescription, comp_contrast_func, describe_mlp)

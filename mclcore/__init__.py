"""mclcore: Mechanistic Contrastive Learning for factored conditional generators.

    import mclcore
    mcl = mclcore.MCL(z_dim=10, x_dim=64, u_dim=16)
    loss = mcl(generator, z, u)          # generator: (z, u) -> x_hat

The native ops live in ``torch.ops.mclcore`` (see ``mclcore.ops``).
"""
from mclcore import ops  # noqa: F401  (registers torch.ops.mclcore)

__version__ = "0.1.0"
_LOSSES = ("MCL", "MCLConfig", "MLPCritic", "ImageCritic", "MLPProj", "StackedMCL", "mcl_loss")
__all__ = [*_LOSSES, "ops", "__version__"]


def __getattr__(name):
    # Imported lazily so `import mclcore.ops` stays light.
    if name in _LOSSES:
        from mclcore.losses import mcl

        return getattr(mcl, name)
    raise AttributeError(f"module 'mclcore' has no attribute {name!r}")

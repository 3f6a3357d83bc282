import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# CI runs on 2 cores: keep property tests small and without deadlines (the first call may JIT-compile).
settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _single_intra_op_thread():
    # Tiny tensors: on the shared 2-core CI box a 2-thread step took ~10x longer than a 1-thread one (OpenMP
    # oversubscription). Test modules opt in with pytestmark = pytest.mark.usefixtures("one_thread").
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


one_thread = pytest.fixture(_single_intra_op_thread, name="one_thread")
# For modules whose module-scoped fixtures must also be built on one thread.
one_thread_module = pytest.fixture(_single_intra_op_thread, scope="module", name="one_thread_module")


@pytest.fixture
def probe_calls(monkeypatch):
    """``patch(module, at, kill_at=None)``: wrap a fresh-critic probe script's ``train_probe`` so every probe it
    starts is recorded as ``args[at:at + 3]`` (critic input, generator, pairing) in the returned list, and the probe
    ``kill_at`` raises KeyboardInterrupt when it starts (a killed measurement). Patching again wraps the original."""
    calls, real = [], {}

    def patch(module, at, kill_at=None):
        fn = real.setdefault(module.__name__, module.train_probe)

        def counted(*args):
            if args[at:at + 3] == kill_at:
                raise KeyboardInterrupt
            calls.append(args[at:at + 3])
            return fn(*args)

        monkeypatch.setattr(module, "train_probe", counted)
        return calls

    return patch

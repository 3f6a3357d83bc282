"""World-model modules (mclcore.models.worldmodel): shapes, the KL term, the gradient-reversal sign, flow matching,
MCL reaching the intended parameters, the Wan adapter with a tiny config, and input errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mclcore.losses.mcl import MCLConfig
from mclcore.models.worldmodel import (ActionInterface, EmbodimentClassifier, ForwardDynamics, FrameAutoencoder,
                                       InverseDynamics, WorldModel, flow_matching_pair, grad_reverse,
                                       kl_standard_normal, sample_flow)
from mclcore.models.worldmodel.modules import kl_per_dim

LAT = (4, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (tests/conftest.py)


def small_model(variant, mcl=True, fdm=None):
    torch.manual_seed(0)
    ae = FrameAutoencoder(4, ch=8)
    fdm = fdm or ForwardDynamics(LAT, dim=32, depth=1, heads=2, patch=4)
    return WorldModel(variant, latent_action_dim=6, ae=ae, fdm=fdm, idm_ch=8, idm_hidden=32,
                      mcl=MCLConfig(critic_hidden=(32,), proj_dim=16) if mcl else None)


def batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, *LAT, generator=g), torch.randn(b, *LAT, generator=g), torch.randn(b, 4, generator=g),
            torch.arange(b) % 2)


def test_shapes():
    ae = FrameAutoencoder(4, ch=8)
    x = torch.rand(3, 3, 64, 64)
    z = ae.encode(x)
    assert z.shape == (3, *LAT) and ae.decode(z).shape == x.shape
    assert 0 <= float(ae.decode(z).detach().min()) and float(ae.decode(z).detach().max()) <= 1
    idm = InverseDynamics(4, 6, ch=8, hidden=16)
    a, mu, logvar = idm(z, z)
    assert a.shape == mu.shape == logvar.shape == (3, 6) and not torch.equal(a, mu)
    assert torch.equal(idm(z, z, sample=False)[0], mu)
    fdm = ForwardDynamics(LAT, dim=32, depth=2, heads=2, patch=2)
    v = fdm(z, torch.rand(3), z, torch.randn(3, 32))
    assert v.shape == z.shape
    assert ActionInterface(4, 32)(torch.randn(3, 5, 4)).shape == (3, 5, 32)          # per-frame actions


def test_dit_starts_near_zero_ignoring_the_action_and_conditions_on_it_after_training_moves_it():
    fdm = ForwardDynamics(LAT, dim=32, depth=1, heads=2, patch=4)
    z, tau = torch.randn(2, *LAT), torch.rand(2)
    out = fdm(z, tau, z, torch.randn(2, 32))
    assert 0 < float(out.detach().abs().max()) < 0.05                                  # small output layer
    assert torch.equal(out, fdm(z, tau, z, torch.randn(2, 32)))                         # AdaLN-Zero
    for p in fdm.parameters():
        torch.nn.init.normal_(p, std=0.2)
    tau = torch.full((2,), 0.5)
    c1, c2 = torch.randn(2, 32), torch.randn(2, 32)
    assert not torch.allclose(fdm(z, tau, z, c1), fdm(z, tau, z, c2))


def test_kl_term_known_values():
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    assert float(kl_standard_normal(mu, logvar)) == 0.0
    mu = torch.full((2, 3), 2.0)
    logvar = torch.full((2, 3), float(torch.log(torch.tensor(0.5))))
    # per dim: 0.5 * (mu^2 + s^2 - log s^2 - 1) = 0.5 * (4 + 0.5 + log 2 - 1)
    expected = 3 * 0.5 * (4 + 0.5 + torch.log(torch.tensor(2.0)).item() - 1)
    assert float(kl_standard_normal(mu, logvar)) == pytest.approx(expected, rel=1e-6)


def test_kl_free_bits_values_and_gradient():
    """Free bits: sum_d max(KL_d, floor) with KL_d the batch mean; 0 = the plain KL; no gradient below the floor."""
    mu = torch.tensor([[2.0, 0.1, 0.0], [2.0, -0.1, 0.0]], requires_grad=True)
    logvar = torch.zeros(2, 3)
    per = kl_per_dim(mu, logvar)
    assert per.tolist() == pytest.approx([2.0, 0.005, 0.0])
    assert float(kl_standard_normal(mu, logvar, 0.0)) == pytest.approx(float(per.sum()))
    kl = kl_standard_normal(mu, logvar, 0.5)
    assert float(kl) == pytest.approx(2.0 + 0.5 + 0.5)
    kl.backward()
    assert mu.grad[:, 0].abs().min() > 0 and float(mu.grad[:, 1:].abs().max()) == 0.0
    with pytest.raises(ValueError, match="free_bits"):
        kl_standard_normal(mu, logvar, -0.1)


def test_kl_free_bits_keep_every_dimension_above_the_floor():
    """A posterior that only the KL term trains: the plain KL drives every dimension to the prior (KL_d -> 0), free
    bits stop each dimension at the floor (within the step size)."""
    floor = 0.3
    results = {}
    for fb in (0.0, floor):
        torch.manual_seed(0)
        mu = torch.nn.Parameter(torch.randn(64, 4) * 2)
        logvar = torch.nn.Parameter(torch.full((64, 4), -2.0))
        opt = torch.optim.SGD([mu, logvar], lr=10.0)      # (Adam's momentum would coast past the floor)
        for _ in range(200):
            opt.zero_grad()
            kl_standard_normal(mu, logvar, fb).backward()
            opt.step()
        results[fb] = kl_per_dim(mu, logvar).detach()
    assert float(results[0.0].max()) < 0.01                         # collapsed
    assert float(results[floor].min()) > floor - 0.05                # held at the floor (one step's overshoot)
    assert float(results[floor].max()) < floor + 0.05


def test_gradient_reversal_sign():
    x = torch.randn(5, 3, requires_grad=True)
    (grad_reverse(x, 0.7) * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.7 * torch.arange(3.0).expand(5, 3))
    # the classifier descends the cross-entropy; its input (the latent action) ascends it
    clf = EmbodimentClassifier(3, 2, hidden=8)
    a = torch.randn(8, 3, requires_grad=True)
    e = torch.arange(8) % 2
    F.cross_entropy(clf(a), e).backward()
    a2 = a.detach().requires_grad_(True)
    F.cross_entropy(clf.net(a2), e).backward()                    # same network without the GRL
    assert torch.allclose(a.grad, -a2.grad)


def test_flow_matching_pair_and_sampler():
    x0, eps = torch.randn(3, *LAT), torch.randn(3, *LAT)
    xt, v = flow_matching_pair(x0, torch.tensor([0.0, 0.5, 1.0]), eps)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2]) and torch.allclose(xt[1], (x0[1] + eps[1]) / 2)
    assert torch.equal(v, eps - x0)
    # with the exact velocity of a straight path, one Euler step lands on x0
    for method in ("euler", "heun"):
        out = sample_flow(lambda x, tau: eps - x0, eps, steps=3, method=method)
        assert torch.allclose(out, x0, atol=1e-5)


@pytest.mark.parametrize("variant", ["acg", "lacg"])
def test_losses_and_mcl_reaches_the_intended_parameters(variant):
    m = small_model(variant)
    # AdaLN-Zero starts with the action channel closed (zero modulation): open it as a few steps of training would
    with torch.no_grad():
        for p in m.fdm.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    vt, vn, a, e = batch()
    out = m.losses(vt, vn, a, e, lambda_mcl=1.0, generator=torch.Generator().manual_seed(0))
    keys = {"flow", "mcl", "loss"} | ({"kl", "grl", "grl_acc", "regressor"} if variant == "lacg" else set())
    assert keys <= set(out) and all(torch.isfinite(v) for v in out.values())
    # the MCL term alone: gradients into the FDM, the action interface, the critic and both heads (and the IDM)
    m.zero_grad()
    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        u = m.condition(vt, vn, a, generator=torch.Generator().manual_seed(1))[0]
        tau = torch.full((6,), 0.6)
        z, _ = flow_matching_pair(vn, tau, torch.randn_like(vn))
        m.mcl(m.one_step_generator(tau, vt), z, u).backward()

    def reached(mod):
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in mod.parameters())
    assert reached(m.fdm) and reached(m.interface) and reached(m.mcl.critic)
    assert reached(m.mcl.Pi_g) and reached(m.mcl.Pi_u)
    if variant == "lacg":
        assert reached(m.idm)
    assert not reached(m.ae)


def test_without_create_graph_mcl_trains_only_its_heads():
    m = small_model("acg")
    m.mcl.create_graph = False
    vt, vn, a, e = batch()
    m.zero_grad()
    out = m.losses(vt, vn, a, e, lambda_adv=0, lambda_mcl=1.0, generator=torch.Generator().manual_seed(0))
    out["mcl"].backward()
    assert all(p.grad is None or not p.grad.any() for p in m.fdm.parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.mcl.Pi_g.parameters())


def test_rollout_shapes_and_lacg_sources():
    m = small_model("lacg", mcl=False).eval()
    frames, actions, emb = torch.rand(2, 5, 3, 64, 64), torch.randn(2, 4, 4), torch.tensor([0, 1])
    for src in ("idm", "regressor"):
        out = m.rollout(frames, actions, emb, 3, steps=2, lacg_source=src, generator=torch.Generator().manual_seed(0))
        assert out.shape == (2, 3, 3, 64, 64)
    with pytest.raises(ValueError, match="source"):
        m.rollout(frames, actions, emb, 3, lacg_source="oracle")
    with pytest.raises(ValueError, match="horizon"):
        m.rollout(frames, actions, emb, 5)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="variant"):
        WorldModel("vla")
    fdm = ForwardDynamics(LAT, dim=32, depth=1, heads=2, patch=4)
    z = torch.randn(2, *LAT)
    with pytest.raises(ValueError, match="x_tau"):
        fdm(torch.randn(2, 3, 16, 16), torch.rand(2), z, torch.randn(2, 32))
    with pytest.raises(ValueError, match="context"):
        fdm(z, torch.rand(2), z[:1], torch.randn(2, 32))
    with pytest.raises(ValueError, match="tau"):
        fdm(z, torch.rand(3), z, torch.randn(2, 32))
    with pytest.raises(ValueError, match="cond"):
        fdm(z, torch.rand(2), z, torch.randn(2, 31))
    with pytest.raises(ValueError, match="patch"):
        ForwardDynamics(LAT, patch=3)
    with pytest.raises(ValueError, match="x"):
        FrameAutoencoder(4, ch=8).encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="actions"):
        small_model("acg").normalize_actions(torch.randn(2, 3))
    with pytest.raises(ValueError, match="lambda_mcl"):
        small_model("acg", mcl=False).losses(*batch(), lambda_mcl=0.1)
    with pytest.raises(ValueError, match="v_next"):
        InverseDynamics(4, 6, ch=8)(z, z[:, :, :8])
    with pytest.raises(TypeError, match="MCLConfig"):       # the MCL options are typed, not keyword dicts
        WorldModel("acg", ae=FrameAutoencoder(4, ch=8), fdm=fdm, mcl=dict(proj_dim=16))
    with pytest.raises(ValueError, match="mcl.tau"):
        WorldModel("acg", ae=FrameAutoencoder(4, ch=8), fdm=fdm, mcl=MCLConfig(tau=0.0))


# ------------------------------------------------------------------------------------------------- Wan adapter
def test_wan_adapter_forward_backward_tiny_config():
    pytest.importorskip("diffusers")
    from mclcore.models.worldmodel.wan_adapter import WanForwardModel, tiny_wan_config

    torch.manual_seed(0)
    wan = WanForwardModel(LAT, cond_dim=32, config=tiny_wan_config(4, layers=1))
    z, tau = torch.randn(2, *LAT), torch.rand(2)
    c1 = torch.randn(2, 32)
    v = wan(z, tau, z, c1)
    assert v.shape == z.shape
    # the action projection starts at zero: the action does not matter until it is trained
    assert torch.equal(v, wan(z, tau, z, torch.randn(2, 32)))
    torch.nn.init.normal_(wan.action_proj.weight, std=0.5)
    assert not torch.allclose(wan(z, tau, z, c1), wan(z, tau, z, -c1))
    # as the world model's forward model, with MCL: gradients reach Wan's blocks and the action projection
    m = small_model("acg", fdm=wan)
    out = m.losses(*batch(2), lambda_mcl=1.0, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert wan.action_proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in wan.wan.blocks.parameters())
    assert wan.wan.condition_embedder.action_tokens is None          # cleared after every call


def test_wan_adapter_errors():
    pytest.importorskip("diffusers")
    from mclcore.models.worldmodel.wan_adapter import WanForwardModel, tiny_wan_config

    with pytest.raises(ValueError, match="latent_shape"):
        WanForwardModel((16, 16, 16), config=tiny_wan_config(4))
    with pytest.raises(ValueError, match="config"):
        WanForwardModel(LAT)
    with pytest.raises(OSError):
        WanForwardModel(LAT, pretrained="/nonexistent/wan")               # local only: never downloads
    wan = WanForwardModel(LAT, cond_dim=8, config=tiny_wan_config(4))
    z = torch.randn(2, *LAT)
    with pytest.raises(ValueError, match="cond"):
        wan(z, torch.rand(2), z, torch.randn(2, 7))


def test_ridge_probe_recovers_a_known_r2():
    """y = x w + noise with Var(x w) = 4 and Var(noise) = 1: R^2 = 0.8 per target; features unrelated to y: R^2 ~ 0."""
    from mclcore.studies.worldmodel.latent_probe import ridge_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 5))
    w = np.zeros((5, 2))
    w[0, 0], w[1, 1], w[2, 1] = 2.0, 2.0 * np.sqrt(0.5), 2.0 * np.sqrt(0.5)     # Var(x w) = 4 per column
    y = x @ w + rng.normal(size=(6000, 2))
    res = ridge_probe(x[:4000], y[:4000], x[4000:], y[4000:])
    assert res["r2"] == pytest.approx(0.8, abs=0.02) and len(res["r2_per_dim"]) == 2
    assert (res["n_train"], res["n_eval"]) == (4000, 2000)
    junk = ridge_probe(rng.normal(size=(4000, 5)), y[:4000], rng.normal(size=(2000, 5)), y[4000:])
    assert abs(junk["r2"]) < 0.02
    with pytest.raises(ValueError, match="alpha"):
        ridge_probe(x[:10], y[:10], x[10:20], y[10:20], alpha=-1)
    with pytest.raises(ValueError, match="x_train"):
        ridge_probe(x[:10, 0], y[:10], x[10:20], y[10:20])


def test_latent_action_probe_on_a_lacg_model():
    """The probe reads the IDM mean of every transition; ACG (no IDM) is refused."""
    from mclcore.studies.worldmodel.data import Episodes
    from mclcore.studies.worldmodel.latent_probe import latent_action_probe

    rng = np.random.default_rng(0)

    def eps(n):
        return Episodes(rng.integers(0, 256, (n, 4, 64, 64, 3), dtype=np.uint8),
                        rng.normal(size=(n, 3, 4)).astype(np.float32), np.zeros((n, 4, 11), np.float32),
                        np.zeros(n, np.int64), np.zeros(n, np.int64))
    res = latent_action_probe(small_model("lacg", mcl=False), eps(6), eps(3))
    assert {"r2", "r2_per_dim", "r2_displacement", "kl_per_dim", "kl_total", "n_train", "n_eval"} <= set(res)
    assert (res["n_train"], res["n_eval"], len(res["kl_per_dim"]), len(res["r2_per_dim"])) == (18, 9, 6, 4)
    with pytest.raises(ValueError, match="LACG"):
        latent_action_probe(small_model("acg", mcl=False), eps(2), eps(2))


def test_latent_action_probe_same_embodiment_uses_only_that_embodiments_training_episodes():
    """``same_embodiment`` fits on the training transitions of the evaluation episodes' embodiment only (here 2 of 5
    episodes = 6 transitions) and equals ridge_probe on exactly those rows; mixed evaluation embodiments: None."""
    from mclcore.studies.worldmodel.data import Episodes
    from mclcore.studies.worldmodel.latent_probe import idm_features, latent_action_probe, ridge_probe

    rng = np.random.default_rng(1)

    def eps(emb):
        n = len(emb)
        return Episodes(rng.integers(0, 256, (n, 4, 64, 64, 3), dtype=np.uint8),
                        rng.normal(size=(n, 3, 4)).astype(np.float32), np.zeros((n, 4, 11), np.float32),
                        np.asarray(emb, np.int64), np.zeros(n, np.int64))
    model = small_model("lacg", mcl=False).eval()
    train, held = eps([0, 1, 0, 0, 1]), eps([1, 1, 1])
    res = latent_action_probe(model, train, held)
    same = res["same_embodiment"]
    assert same["embodiment"] == 1 and (same["n_train"], same["n_eval"]) == (6, 9)
    x_tr, y_tr = idm_features(model, train.subset(np.array([1, 4])))
    x_ev, y_ev = idm_features(model, held)
    # features computed in other batches differ in the last bits; 6 training rows make the fit sensitive to them
    want = ridge_probe(x_tr, y_tr, x_ev, y_ev)["r2_per_dim"]
    assert same["r2_per_dim"] == pytest.approx(want, rel=2e-3)
    assert res["r2_per_dim"] != pytest.approx(want, rel=2e-3)        # the all-episode probe is another fit
    assert latent_action_probe(model, train, eps([0, 1]))["same_embodiment"] is None


@pytest.mark.parametrize("variant", ["acg", "lacg"])
def test_self_context_feeds_the_models_own_prediction(variant):
    """``self_context``: where ``use``, the context is the model's one-step prediction of frame t from frame t-1 (no
    gradient through it); the loss changes with the mask and stays finite; free bits reach the KL (LACG)."""
    model = small_model(variant, mcl=False)
    v_t, v_n, a, e = batch()
    v_prev = torch.randn_like(v_t)
    out = {}
    for name, use in (("none", torch.zeros(6, dtype=torch.bool)), ("all", torch.ones(6, dtype=torch.bool))):
        g = torch.Generator().manual_seed(1)
        out[name] = model.losses(v_t, v_n, a, e, self_context=(v_prev, a, use), kl_free_bits=0.5, generator=g)
        assert torch.isfinite(out[name]["loss"])
    assert float(out["none"]["flow"]) != float(out["all"]["flow"])
    out["all"]["loss"].backward()
    assert all(p.grad is not None for p in model.fdm.parameters() if p.requires_grad)
    if variant == "lacg":
        assert float(out["all"]["kl"]) >= 0.5 * model.latent_action_dim - 1e-6 and "kl_raw" in out["all"]


def test_new_config_fields_are_validated_by_name():
    from mclcore.studies.worldmodel.config import PRESETS, build_config
    from mclcore.train.config import apply_overrides

    for key, bad in (("dynamics.kl_free_bits", "-0.1"), ("dynamics.self_context", "1.5"),
                     ("dynamics.self_context", "-0.2"), ("model.idm_logvar_init", "-20"),
                     ("model.idm_inputs", "pixels")):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            apply_overrides(build_config("lacg", False, "cpu-smoke"), [f"{key}={bad}"]).validate()
    cfg = build_config("lacg", False, "cpu-smoke")
    assert (cfg.dynamics.kl_free_bits, cfg.dynamics.self_context) == (0.0, 0.0)      # defaults: the old objective
    assert (cfg.model.idm_logvar_init, cfg.model.idm_norm, cfg.model.idm_inputs) == (None, False, "frames")
    assert "cpu" in PRESETS
    build_config("lacg", True, "cpu").validate()


def test_idm_options_norm_logvar_init_and_delta_inputs():
    """``logvar_init`` sets the initial log-variance; ``norm`` gives the mean unit spread over a batch (train mode);
    ``inputs="delta"`` reads only the scaled change (identical frames -> the same output whatever the scene);
    the world model keeps the IDM's scale equal to its own, also after loading a state dict (not saved twice)."""
    torch.manual_seed(0)
    v_t, v_n = torch.randn(16, *LAT), torch.randn(16, *LAT)
    idm = InverseDynamics(4, 6, ch=8, hidden=16, logvar_init=-6.0)
    assert torch.allclose(idm(v_t, v_n, sample=False)[2], torch.full((16, 6), -6.0), atol=0.5)
    torch.manual_seed(0)
    plain = InverseDynamics(4, 6, ch=8, hidden=16).train()
    torch.manual_seed(0)
    idm = InverseDynamics(4, 6, ch=8, hidden=16, norm=True).train()
    spread_plain = plain(v_t, v_n, sample=False)[1].std(0, unbiased=False)
    spread = idm(v_t, v_n, sample=False)[1].std(0, unbiased=False)   # <= 1: BatchNorm's eps against a tiny variance
    assert float(spread.min()) > 0.3 and float(spread.max()) <= 1.0 + 1e-4 and float(spread_plain.max()) < 0.1
    idm = InverseDynamics(4, 6, ch=8, hidden=16, inputs="delta").eval()
    assert torch.equal(idm(v_t, v_t, sample=False)[1], idm(v_n, v_n, sample=False)[1])
    with pytest.raises(ValueError, match="inputs"):
        InverseDynamics(4, 6, inputs="pixels")
    torch.manual_seed(0)
    wm = WorldModel("lacg", latent_action_dim=6, ae=FrameAutoencoder(4, ch=8),
                    fdm=ForwardDynamics(LAT, dim=32, depth=1, heads=2, patch=4), idm_ch=8, idm_hidden=16,
                    idm_norm=True, idm_inputs="delta", idm_logvar_init=-6.0)
    wm.set_delta_scale(5.0)
    sd = wm.state_dict()
    assert "idm.delta_scale" not in sd and float(sd["delta_scale"]) == 5.0
    torch.manual_seed(1)
    other = WorldModel("lacg", latent_action_dim=6, ae=FrameAutoencoder(4, ch=8),
                       fdm=ForwardDynamics(LAT, dim=32, depth=1, heads=2, patch=4), idm_ch=8, idm_hidden=16,
                       idm_norm=True, idm_inputs="delta", idm_logvar_init=-6.0)
    other.load_state_dict(sd)
    assert float(other.idm.delta_scale) == 5.0


def test_supervised_ceiling_reads_an_action_that_the_frames_show():
    """The ceiling's IDM is trained on the true action: where action 0 sets the brightness change between frames it
    is read back (R^2 high), while action 1 (noise the frames never show) is not; ACG and bad steps are refused."""
    from mclcore.studies.worldmodel.data import Episodes
    from mclcore.studies.worldmodel.latent_probe import supervised_ceiling

    rng = np.random.default_rng(2)

    def eps(n, T=6):
        a = rng.uniform(-1, 1, size=(n, T, 4)).astype(np.float32)
        level = 128 + 12 * np.concatenate([np.zeros((n, 1)), np.cumsum(a[..., 0], 1)], 1)        # (n, T+1)
        frames = np.clip(level[:, :, None, None, None] + rng.normal(0, 2, (n, T + 1, 64, 64, 3)), 0, 255)
        return Episodes(frames.astype(np.uint8), a, np.zeros((n, T + 1, 11), np.float32), np.zeros(n, np.int64),
                        np.zeros(n, np.int64))
    torch.manual_seed(0)
    res = supervised_ceiling(small_model("lacg", mcl=False), eps(24), eps(6), steps=150, batch=32)
    assert res["r2_per_dim"][0] > 0.8 and res["r2_per_dim"][1] < 0.3, res["r2_per_dim"]
    assert res["same_embodiment"]["n_train"] == 24 * 6 and res["steps"] == 150
    # several evaluation sets: one training, each set's numbers equal a call of its own (same seed, same training)
    model, train, evs = small_model("lacg", mcl=False), eps(8), {"a": eps(3), "b": eps(4)}
    both = supervised_ceiling(model, train, evs, steps=20, batch=16)
    for name, ev in evs.items():
        assert both[name] == supervised_ceiling(model, train, ev, steps=20, batch=16), name
    with pytest.raises(ValueError, match="LACG"):
        supervised_ceiling(small_model("acg", mcl=False), eps(2), eps(2), steps=2)
    with pytest.raises(ValueError, match="steps"):
        supervised_ceiling(small_model("lacg", mcl=False), eps(2), eps(2), steps=0)

"""GMD (Assumption 2) and LRD (Assumption 1) certificates, and the ``mcl certify`` command."""
import math

import pytest
import torch

from mclcore.cli import main
from mclcore.mechanism import certify, certify_lrd, contrast_certificate, lrd_vectors
from mclcore.models.generators import GMDGenerator, MLPGenerator

F64 = torch.float64
DZ = 3


@pytest.fixture(scope="module")
def smooth_gmd():
    # App. D.3 generator with the smooth activation and exactly 2dz + 1 conditions: built to satisfy Assumption 2
    # (measured: every latent passes, sigma_min/sigma_max >= 2e-3 at seed 0, far above rtol = 1e-6).
    return GMDGenerator(DZ, n_alphabet=2 * DZ + 1, activation="smooth_leaky", seed=0, cond_draws=200)


def latents(n=32, dz=DZ, seed=0):
    return torch.randn(n, dz, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_generator_built_to_satisfy_assumption_2_passes(smooth_gmd):
    cert = certify(smooth_gmd, latents(), smooth_gmd.alphabet)
    assert cert.holds and cert.pass_fraction == 1.0 and cert.reasons == []
    assert cert.rank.tolist() == [2 * DZ] * 32 and cert.path == "op"
    assert bool((cert.ratio > 1e-4).all()) and bool((cert.sigma_min <= cert.sigma_max).all())
    assert "HOLDS" in cert.summary()


def test_alphabet_of_2dz_fails_with_that_reason(smooth_gmd):
    cert = certify(smooth_gmd, latents(), smooth_gmd.alphabet[: 2 * DZ])
    assert not cert.holds and cert.pass_fraction == 0.0
    assert int(cert.rank.max()) == 2 * DZ - 1 and bool((cert.sigma_min == 0).all())
    assert len(cert.reasons) == 1 and "|U| = 6 conditions, but the assumption needs at least 2dz + 1 = 7" in \
        cert.reasons[0]


def test_leaky_relu_generator_is_reported_degenerate():
    G = GMDGenerator(DZ, n_alphabet=9, activation="leaky_relu", seed=0, cond_draws=200)  # the paper's activation
    cert = certify(G, latents(16), G.alphabet)
    assert cert.degenerate and not cert.holds and cert.pass_fraction == 0.0
    assert any("piecewise linear" in r for r in cert.reasons)
    assert bool((cert.rank == 0).all())


def test_torch_func_path_gives_the_same_certificate(smooth_gmd):
    fast = certify(smooth_gmd, latents(3), smooth_gmd.alphabet)
    slow = certify(smooth_gmd, latents(3), smooth_gmd.alphabet, path="torch.func")
    assert slow.path == "torch.func" and torch.equal(fast.rank, slow.rank)
    torch.testing.assert_close(fast.ratio, slow.ratio, rtol=1e-6, atol=0)


def test_contrast_certificate_known_ranks():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, 8, 4, generator=g, dtype=F64)          # dz = 2, 8 conditions: generic, full rank
    cert = contrast_certificate(v, assumption="test", names=["a", "b", "c", "d"])
    assert cert.holds and cert.rank.tolist() == [4] * 5
    v[:, :, 3] = 7.0                                            # component d does not change with u
    v[2, 5, 0] = math.nan                                       # undefined at latent 2
    cert = contrast_certificate(v, assumption="test", names=["a", "b", "c", "d"])
    assert cert.rank.tolist() == [3, 3, 0, 3, 3] and not cert.passed.any()
    assert math.isnan(float(cert.sigma_max[2]))
    text = " ".join(cert.reasons)
    assert "contrasts of d vanish at every latent" in text and "at 1 of 5 latents the vector could not be" in text
    assert "rank-deficient at 4 of 5 latents (rank 3..3 < 4" in text
    # a combination of other columns is rank-deficient although no column vanishes
    v = torch.randn(3, 8, 4, generator=g, dtype=F64)
    v[:, :, 3] = v[:, :, 0] - 2 * v[:, :, 1]
    cert = contrast_certificate(v, assumption="test", names=list("abcd"))
    assert cert.rank.tolist() == [3, 3, 3] and "rank-deficient at 3 of 3" in cert.reasons[0]
    with pytest.raises(ValueError, match="even last dimension"):
        contrast_certificate(torch.zeros(2, 3, 5), assumption="t", names=list("abcde"))


def gaussian_prior(mu_w, logs_w):
    """iVAE's conditional prior N(mu(u), diag s(u)^2) with linear mu, log s."""

    def log_prob(z, u):
        mu, logs = u @ mu_w, u @ logs_w
        return (-0.5 * ((z - mu) / logs.exp()) ** 2 - logs - 0.5 * math.log(2 * math.pi)).sum(-1)

    return log_prob


def test_lrd_certificate_gaussian_prior():
    g = torch.Generator().manual_seed(2)
    alphabet = torch.randn(2 * DZ + 1, 4, generator=g, dtype=F64)
    mu_w, logs_w = torch.randn(4, DZ, generator=g, dtype=F64), 0.5 * torch.randn(4, DZ, generator=g, dtype=F64)
    z = latents(16)
    lp = gaussian_prior(mu_w, logs_w)
    w = lrd_vectors(lp, z, alphabet[:1].expand(16, 4))
    mu, s2 = alphabet[:1] @ mu_w, (2 * alphabet[:1] @ logs_w).exp()
    torch.testing.assert_close(w, torch.cat([-(z - mu) / s2, (-1 / s2).expand(16, DZ)], 1))  # the stated form
    cert = certify_lrd(lp, z, alphabet)
    assert cert.holds and cert.assumption.startswith("Assumption 1")
    # homoscedastic prior: d2 log p / dz_i^2 = -1/s^2 does not depend on u, so LRD cannot hold
    cert = certify_lrd(gaussian_prior(mu_w, torch.zeros(4, DZ, dtype=F64)), z, alphabet)
    assert not cert.holds and int(cert.rank.max()) == DZ
    assert "d2 log p/dz_1^2, d2 log p/dz_2^2, d2 log p/dz_3^2 vanish at every latent" in " ".join(cert.reasons)


@pytest.mark.parametrize("call,err,match", [
    (lambda G: certify(G, torch.randn(4), G.alphabet), ValueError, r"z: expected a 2-D tensor"),
    (lambda G: certify(G, torch.randn(4, DZ), G.alphabet[0]), ValueError, r"alphabet: expected a 2-D tensor"),
    (lambda G: certify(G, torch.randn(0, DZ), G.alphabet), ValueError, r"z: expected at least one latent"),
    (lambda G: certify(G, torch.randn(4, DZ), G.alphabet, rtol=0.0), ValueError, r"rtol"),
    (lambda G: certify_lrd("prior", torch.randn(4, DZ), G.alphabet), TypeError, r"log_prob: expected a callable"),
    (lambda G: certify(torch.nn.Sequential(torch.nn.Linear(DZ + 2, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 4)),
                       torch.randn(4, DZ), torch.randn(3, 2), path="op"), ValueError, r"LayerNorm is not supported"),
])
def test_bad_inputs(smooth_gmd, call, err, match):
    with pytest.raises(err, match=match):
        call(smooth_gmd)


def test_cli_synthetic(tmp_path, capsys):
    out = tmp_path / "hist.png"
    rc = main(["certify", "--synthetic", "--dz", "2", "--alphabet", "5", "--seed", "0", "--activation",
               "smooth_leaky", "--n-z", "24", "--no-progress", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "HOLDS at every latent" in text and "24/24" in text
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = main(["certify", "--synthetic", "--dz", "2", "--alphabet", "5", "--n-z", "8", "--no-progress", "--out",
               str(tmp_path / "paper.png")])  # the paper's leaky-ReLU generator
    assert rc == 1 and "piecewise linear" in capsys.readouterr().out and (tmp_path / "paper.png").exists()


def test_cli_saved_models(tmp_path, capsys):
    G = GMDGenerator(2, n_alphabet=5, activation="smooth_leaky", seed=1, cond_draws=200)
    torch.save(G, tmp_path / "gmd.pt")
    rc = main(["certify", str(tmp_path / "gmd.pt"), "--n-z", "8", "--no-progress", "--out", str(tmp_path / "a.png")])
    assert rc == 0 and "GMDGenerator from" in capsys.readouterr().out
    M = MLPGenerator(2, 6, du=3, widths=(8,), activation="tanh", seed=0)  # no alphabet: drawn from N(0, I_du)
    torch.save(M, tmp_path / "mlp.pt")
    torch.save(torch.randn(4, 3), tmp_path / "U.pt")
    rc = main(["certify", str(tmp_path / "mlp.pt"), "--alphabet-file", str(tmp_path / "U.pt"), "--n-z", "4",
               "--no-progress", "--out", str(tmp_path / "b.png")])
    assert rc == 1 and "|U| = 4 conditions, but the assumption needs at least 2dz + 1 = 5" in capsys.readouterr().out
    rc = main(["certify", str(tmp_path / "mlp.pt"), "--du", "3", "--alphabet", "9", "--n-z", "4", "--no-progress",
               "--out", str(tmp_path / "c.png")])
    assert rc in (0, 1) and "|U| = 9" in capsys.readouterr().out and (tmp_path / "c.png").exists()


@pytest.mark.parametrize("argv,match", [
    (["certify", "--n-z", "4"], "give a model file"),
    (["certify", "missing.pt"], "no such file"),
    (["certify", "x.pt", "--synthetic"], "not both"),
])
def test_cli_bad_input(argv, match, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "h.png")]) == 2
    assert match in capsys.readouterr().err


def test_cli_state_dict_is_rejected(tmp_path, capsys):
    torch.save(MLPGenerator(2, 4, seed=0).state_dict(), tmp_path / "sd.pt")
    assert main(["certify", str(tmp_path / "sd.pt"), "--out", str(tmp_path / "h.png")]) == 2
    assert "not a state_dict" in capsys.readouterr().err

"glscl.losses (contrastive, ICL, IDL) against loop references written here."
import math
import pytest
import torch
import torch.nn.functional as F
import glscl.losses as losses
from glscl.losses import contrastive_loss, inter_consistency_loss, intra_diversity_loss, consistency_matrix


def loop_nce(sim, logit_scale):
    s = min(math.exp(logit_scale), 100.0)
    X = [[s * float(x) for x in row] for row in sim]
    def ce(M):
        return -sum(M[a][a] - math.log(sum(math.exp(x) for x in M[a])) for a in range(len(M))) / len(M)
    return 0.5 * (ce(X) + ce([list(r) for r in zip(*X, strict=True)]))


def loop_icl(qv, qt, beta, target, norm):
    B, K, D = qv.shape
    mse = 0.
    for k in range(K):
        for d in range(D):
            mv = sum(float(qv[b, k, d]) for b in range(B)) / B
            mt = sum(float(qt[b, k, d]) for b in range(B)) / B
            mse += (mv - mt) ** 2
    mse /= K * D
    reg = 0.
    for k in range(K):
        mkk = sum(float(qv[b, k] @ qt[b, k]) for b in range(B)) / (K if norm == 'k' else B)
        reg += (mkk - target) ** 2
    return mse + beta * reg


def loop_idl(q, alpha, margin):
    B, K, _ = q.shape
    G = [[sum(float(q[b, i] @ q[b, j]) for b in range(B)) / B for j in range(K)] for i in range(K)]
    tot = 0.
    for i in range(K):
        for j in range(K):
            if i != j:
                tot += max(0., margin + G[i][j] - G[i][i]) + max(0., margin + G[i][j] - G[j][j])
    return alpha * tot / (K * (K - 1))


def test_all_three_exported():
    assert {'contrastive_loss', 'inter_consistency_loss', 'intra_diversity_loss'} <= set(losses.__all__)
    assert len(set(losses.__all__)) == len(losses.__all__)


@pytest.mark.parametrize('ls', [0.0, math.log(1 / 0.07), math.log(100.0), math.log(200.0)])
def test_contrastive_matches_loop(ls):
    sim = torch.rand(6, 6) * 2 - 1
    assert abs(contrastive_loss(sim, torch.tensor(ls)).item() - loop_nce(sim, ls)) < 1e-4
    assert abs(contrastive_loss(sim, ls).item() - loop_nce(sim, ls)) < 1e-4


def test_the_cap_keeps_the_gradient_at_ln_100():
    """At the float nearest ln 100 (where the training loop's clamp leaves the parameter) the scale gets the gradient
    of the released loss, which has no clamp in the forward; past the cap it gets none and acts as 100."""
    sim = torch.rand(6, 6, dtype=torch.float64) * 2 - 1
    def grad(f, ls):
        x = torch.tensor(ls, dtype=torch.float32, requires_grad=True)
        f(sim.float(), x).backward(); return x.grad.item()
    released = lambda S, x: 0.5 * (F.cross_entropy(x.exp() * S,
                                                   torch.arange(6)) + F.cross_entropy(x.exp() * S.T, torch.arange(6)))
    at_cap = torch.tensor(math.log(100), dtype=torch.float32).item()
    assert math.exp(at_cap) > 100                                    # float32 rounds ln 100 up: exp(s) > 100
    g = grad(contrastive_loss, at_cap)
    assert g != 0 and g == pytest.approx(grad(released, at_cap), rel=1e-6, abs=0)
    assert grad(contrastive_loss, math.log(200)) == 0
    assert contrastive_loss(sim.float(), math.log(200)).item() == pytest.approx(loop_nce(sim, math.log(100)), rel=1e-5)


def test_contrastive_is_symmetric_and_clamped():
    sim = torch.rand(5, 5)
    torch.testing.assert_close(contrastive_loss(sim, 2.0), contrastive_loss(sim.T, 2.0))
    torch.testing.assert_close(contrastive_loss(sim, math.log(200)), contrastive_loss(sim, math.log(100)))
    assert (contrastive_loss(sim, math.log(50)) - contrastive_loss(sim, math.log(100))).abs() > 1e-4
    # a non-symmetric logit matrix: the two directions differ, the loss averages them
    a = F.cross_entropy(10 * sim, torch.arange(5)); b = F.cross_entropy(10 * sim.T, torch.arange(5))
    torch.testing.assert_close(contrastive_loss(sim, math.log(10)), (a + b) / 2)


def test_contrastive_gradients():
    sim = torch.rand(4, 4, requires_grad=True)
    ls = torch.tensor(math.log(20.0), requires_grad=True)
    contrastive_loss(sim, ls).backward()
    assert ls.grad.abs() > 0 and sim.grad.abs().sum() > 0
    ls2 = torch.tensor(math.log(300.0), requires_grad=True)
    contrastive_loss(sim, ls2).backward()
    assert ls2.grad == 0                                # clamped: no gradient pushes the scale further


def test_contrastive_errors():
    with pytest.raises(ValueError, match='square'): contrastive_loss(torch.rand(3, 4), 1.0)
    with pytest.raises(ValueError, match='square'): contrastive_loss(torch.rand(3), 1.0)


@pytest.mark.parametrize('norm', ['k', 'batch'])
def test_icl_matches_loop(norm):
    qv, qt = F.normalize(torch.randn(6, 4, 5), dim=-1), F.normalize(torch.randn(6, 4, 5), dim=-1)
    for beta, target in [(0.02, 0.75), (1.0, 0.3)]:
        assert abs(inter_consistency_loss(qv, qt, beta, target, norm).item() - loop_icl(qv, qt,
                                                                                        beta, target, norm)) < 1e-5


def test_icl_norms_differ_and_matrix():
    qv, qt = torch.randn(6, 4, 5), torch.randn(6, 4, 5)
    Mk, Mb = consistency_matrix(qv, qt, 'k'), consistency_matrix(qv, qt, 'batch')
    torch.testing.assert_close(Mk * 4, Mb * 6)
    for k in range(4):
        for j in range(4):
            assert abs(float(Mk[k, j]) - sum(float(qv[b, k] @ qt[b, j]) for b in range(6)) / 4) < 1e-4
    assert inter_consistency_loss(qv, qt, 1.0, norm='k') != inter_consistency_loss(qv, qt, 1.0, norm='batch')


def test_icl_zero_when_consistent():
    # identical outputs whose diagonal is exactly the target: M_kk = sum_b 1 / K = B / K
    q = F.normalize(torch.randn(6, 4, 5), dim=-1)
    assert inter_consistency_loss(q, q, 1.0, target=6 / 4, norm='k').abs() < 1e-6
    assert inter_consistency_loss(q, q, 1.0, target=1.0, norm='batch').abs() < 1e-6


def test_icl_errors():
    q = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match='norm must be'): inter_consistency_loss(q, q, 0.1, norm='mean')
    with pytest.raises(ValueError, match='matched pairs'): inter_consistency_loss(q, q[:3], 0.1)
    with pytest.raises(ValueError, match=r'\[B, K, D\]'): inter_consistency_loss(q[0], q[0], 0.1)


def test_idl_matches_loop():
    for margin in (0.1, 0.5):
        q = F.normalize(torch.randn(5, 6, 8), dim=-1)
        assert abs(intra_diversity_loss(q, 1.0, margin).item() - loop_idl(q, 1.0, margin)) < 1e-5
        q2 = torch.randn(5, 6, 8)                    # unnormalised: G_ii differ, both sides of the ranking matter
        assert abs(intra_diversity_loss(q2, 0.3, margin).item() - loop_idl(q2, 0.3, margin)) < 1e-4


def test_idl_orthogonal_and_collapsed():
    alpha, margin = 1e-4, 0.1
    ortho = torch.eye(8)[None].repeat(4, 1, 1)
    assert intra_diversity_loss(ortho, alpha, margin) == 0
    # orthogonal-ish: pairwise cosines well under 1 - margin
    spread = F.normalize(torch.eye(8) + 0.2 * torch.randn(8, 8), dim=-1)[None].repeat(3, 1, 1)
    assert intra_diversity_loss(spread, alpha, margin) == 0
    collapsed = F.normalize(torch.ones(4, 8, 16), dim=-1)
    # every hinge is exactly the margin: 2 * alpha * margin = 2e-5, the size of assert_close's default atol, so atol=0
    torch.testing.assert_close(intra_diversity_loss(collapsed, alpha, margin), torch.tensor(2 * alpha * margin),
                               rtol=1e-5, atol=0)
    assert intra_diversity_loss(collapsed, alpha, margin) > 0


def idl_queries(B=3, K=5, D=7, seed=0):
    """Unnormalised queries whose norms grow with k: G_ii differ (0.25 ... 9 times), so the two sides of the ranking
    differ."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 3.0, K)
    return torch.randn(B, K, D, generator=g, dtype=torch.float64).float() * scale[None, :, None]


def hinge_sides(q, margin):
    "Per off-diagonal (i, j): is margin + G_ij - G_ii > 0 (the i side), is margin + G_ij - G_jj > 0 (the j side)."
    G = torch.einsum('bkd,bjd->kj', q.double(), q.double()) / len(q)
    d = G.diagonal()
    off = ~torch.eye(len(G), dtype=torch.bool)
    return (margin + G - d[:, None] > 0)[off], (margin + G - d[None, :] > 0)[off], G


@pytest.mark.parametrize('alpha', [1.0, 0.37])
def test_idl_every_hinge_active_and_large(alpha):
    "A margin above max(G_ii - G_ij): all 2K(K-1) hinges active and large; exact against the float64 loop (atol=0)."
    q = idl_queries()
    _, _, G = hinge_sides(q, 0.0)
    d = G.diagonal()
    margin = float((d[:, None] - G).max()) + 1.0
    left, right, _ = hinge_sides(q, margin)
    assert left.all() and right.all()
    assert d.max() / d.min() > 4                               # unequal G_ii: the i and j sides are different numbers
    got, want = intra_diversity_loss(q, alpha, margin), loop_idl(q.double(), alpha, margin)
    assert want > alpha                                        # large: no absolute tolerance can hide a lost term
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0)
    # with every hinge active the loss is linear: alpha * sum_{i!=j} (2 margin + 2 G_ij - G_ii - G_jj) / (K(K-1))
    K = len(G); off = ~torch.eye(K, dtype=torch.bool)
    closed = alpha * (2 * margin + 2 * G - d[:, None] - d[None, :])[off].sum() / (K * (K - 1))
    torch.testing.assert_close(got.double(), closed, rtol=1e-5, atol=0)


@pytest.mark.parametrize('seed', [0, 1])
def test_idl_mixed_hinges_match_loop(seed):
    """A margin inside the spread of G_ii - G_ij: pairs with both, one or no side active; exact against the loop
    (atol=0)."""
    q = idl_queries(B=4, K=6, D=5, seed=seed)   # B != K: G is a mean over the batch, not over the queries
    _, _, G = hinge_sides(q, 0.0)
    d = G.diagonal(); off = ~torch.eye(len(G), dtype=torch.bool)
    margin = float((d[:, None] - G)[off].median())
    left, right, _ = hinge_sides(q, margin)
    assert (left & right).any() and (left ^ right).any() and (~left & ~right).any()
    got, want = intra_diversity_loss(q, 0.5, margin), loop_idl(q.double(), 0.5, margin)
    assert want > 0.1
    torch.testing.assert_close(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0)


def test_idl_errors():
    with pytest.raises(ValueError, match='at least 2'): intra_diversity_loss(torch.randn(3, 1, 4), 1.0)
    with pytest.raises(ValueError, match=r'\[B, K, D\]'): intra_diversity_loss(torch.randn(3, 4), 1.0)

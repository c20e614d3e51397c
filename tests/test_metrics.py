"glscl.metrics (ranks, R@K, MdR, MnR, multi-sentence, DSL, QB-Norm, the table) against slow loop references written here."
import math, random, statistics
import pytest, torch
import glscl.metrics as metrics
from glscl.metrics import (retrieval_ranks, recall_at, retrieval_metrics, dual_softmax, qb_norm, activation_set,
                           metrics_rows, format_metrics)

KEYS = ['R1', 'R5', 'R10', 'R50', 'MdR', 'MnR']


# ---------------------------------------------------------------- loop references

def loop_counts(row, c):
    "(#scores strictly above row[c], #other scores equal to it), by counting."
    greater = sum(1 for j, x in enumerate(row) if x > row[c])
    ties = sum(1 for j, x in enumerate(row) if j != c and x == row[c])
    return greater, ties

def loop_rank(row, c):
    "Expected rank under random tie-breaking: the average of the equally likely positions."
    g, t = loop_counts(row, c)
    positions = range(g + 1, g + t + 2)
    return sum(positions) / len(positions)

def loop_hit(row, c, k):
    "Chance of being in the top k: the fraction of the equally likely positions that are <= k."
    g, t = loop_counts(row, c)
    positions = range(g + 1, g + t + 2)
    return sum(1 for p in positions if p <= k) / len(positions)

def shuffled_rank(row, c, n, rng):
    "Monte-Carlo: sort with random tie-breaking n times and average the position of c."
    tot = 0
    for _ in range(n):
        keys = [rng.random() for _ in row]
        order = sorted(range(len(row)), key=lambda j: (-row[j], keys[j]))
        tot += order.index(c) + 1
    return tot / n

def loop_direction(rows, targets):
    "R@K, MdR (statistics.median: mean of the two middle values), MnR of rows with one correct column each."
    ranks = [loop_rank(r, c) for r, c in zip(rows, targets)]
    out = {f'R{k}': 100 * sum(loop_hit(r, c, k) for r, c in zip(rows, targets)) / len(rows) for k in (1, 5, 10, 50)}
    return dict(out, MdR=statistics.median(ranks), MnR=sum(ranks) / len(ranks))

def loop_metrics(sim):
    S = sim.tolist()
    n = len(S)
    return {'t2v': loop_direction(S, range(n)), 'v2t': loop_direction([list(c) for c in zip(*S)], range(n))}

def assert_metrics_close(got, want, tol=1e-9):
    for d in ('t2v', 'v2t'):
        assert list(got[d]) == KEYS
        for k in KEYS:
            assert abs(got[d][k] - want[d][k]) <= tol * max(1, abs(want[d][k])), (d, k, got[d][k], want[d][k])


# ---------------------------------------------------------------- ranks and recall

def test_exports():
    assert {'retrieval_ranks', 'recall_at', 'retrieval_metrics', 'dual_softmax', 'qb_norm', 'metrics_rows',
            'format_metrics'} <= set(metrics.__all__)


@pytest.mark.parametrize('levels', [3, 1000])       # 3 levels: many ties; 1000: almost none
def test_ranks_and_recall_match_loops(levels):
    sim = torch.randint(0, levels, (13, 17)).float()
    target = torch.randint(0, 17, (13,))
    S = sim.tolist()
    want = [loop_rank(S[q], int(target[q])) for q in range(13)]
    assert retrieval_ranks(sim, target).tolist() == want
    assert retrieval_ranks(sim, target, chunk_elems=20).tolist() == want      # one row per block
    for k in (1, 2, 3, 5, 17, 40):
        ref = 100 * sum(loop_hit(S[q], int(target[q]), k) for q in range(13)) / 13
        assert abs(recall_at(sim, target, k) - ref) < 1e-9
        assert abs(recall_at(sim, target, k, chunk_elems=50) - ref) < 1e-9


def test_expected_rank_matches_shuffled_sorting():
    rng = random.Random(0)
    sim = torch.randint(0, 3, (5, 6)).float()
    target = torch.randint(0, 6, (5,))
    got = retrieval_ranks(sim, target)
    for q in range(5):
        assert abs(got[q].item() - shuffled_rank(sim[q].tolist(), int(target[q]), 3000, rng)) < 0.12


def test_hand_row():
    row = torch.tensor([[0.2, 0.5, 0.5, 0.1]])
    assert retrieval_ranks(row, torch.tensor([1])).tolist() == [1.5]
    assert retrieval_ranks(row, torch.tensor([0])).tolist() == [3.0]
    assert recall_at(row, [1], 1) == 50.0 and recall_at(row, [1], 2) == 100.0 and recall_at(row, [0], 2) == 0.0


def test_all_equal_is_chance():
    G = 7
    m = retrieval_metrics(torch.full((G, G), 0.25))
    for d in ('t2v', 'v2t'):
        assert abs(m[d]['R1'] - 100 / G) < 1e-9
        assert abs(m[d]['R5'] - 500 / G) < 1e-9
        assert m[d]['R10'] == 100.0
        assert m[d]['MnR'] == (G + 1) / 2 and m[d]['MdR'] == (G + 1) / 2


def test_perfect_diagonal():
    m = retrieval_metrics(torch.eye(20) + 0.05 * torch.rand(20, 20))
    for d in ('t2v', 'v2t'):
        assert m[d] == dict(R1=100.0, R5=100.0, R10=100.0, R50=100.0, MdR=1.0, MnR=1.0)


@pytest.mark.parametrize('n,levels', [(12, 3), (12, 10_000), (11, 4), (60, 5)])
def test_retrieval_metrics_match_loops(n, levels):
    sim = torch.randint(0, levels, (n, n)).float()
    assert_metrics_close(retrieval_metrics(sim), loop_metrics(sim))
    assert_metrics_close(retrieval_metrics(sim, chunk_elems=n), loop_metrics(sim))


def test_median_of_even_count_averages_the_middle():
    # t2v ranks 1, 2, 3, 4 (row i has i videos above its own): np.median gives 2.5, torch.median 2
    sim = torch.tensor([[4., 3., 2., 1.],
                        [4., 3., 2., 1.],
                        [4., 3., 2., 1.],
                        [4., 3., 2., 1.]])
    m = retrieval_metrics(sim)
    assert m['t2v']['MdR'] == 2.5 and m['t2v']['MnR'] == 2.5
    assert m['t2v']['R1'] == 25.0


def test_a_direction_is_not_the_other():
    # text 0 is confused (video 1 beats video 0 in row 0); video 0 still finds text 0 first in column 0
    sim = torch.tensor([[0.5, 0.9, 0.0],
                        [0.1, 1.0, 0.0],
                        [0.2, 0.0, 0.8]])
    m = retrieval_metrics(sim)
    assert m['t2v']['R1'] == pytest.approx(200 / 3) and m['t2v']['MnR'] == pytest.approx(4 / 3)
    assert m['v2t']['R1'] == 100.0 and m['v2t']['MnR'] == 1.0


# ---------------------------------------------------------------- multi-sentence

HAND = torch.tensor([[0.9, 0.1, 0.6],      # c0, video 0
                     [0.9, 0.8, 0.3],      # c1, video 0
                     [0.2, 0.6, 0.7],      # c2, video 1
                     [0.4, 0.4, 0.4],      # c3, video 2
                     [0.1, 0.2, 0.6]])     # c4, video 2
HAND_CV = [0, 0, 1, 2, 2]


def test_multi_sentence_hand_computed():
    m = retrieval_metrics(HAND, HAND_CV)
    # t2v ranks by hand: c0 1, c1 1, c2 2 (0.7 above), c3 2 (ties with both other videos), c4 1
    assert m['t2v']['R1'] == pytest.approx(100 * (1 + 1 + 0 + 1 / 3 + 1) / 5)
    assert m['t2v']['R5'] == 100.0 and m['t2v']['MdR'] == 1.0 and m['t2v']['MnR'] == pytest.approx(1.4)
    # v2t by hand: video 0 -> 1 (c0, c1 tie at 0.9 but both are right), video 1 -> 2 (c1 0.8 beats c2 0.6),
    # video 2 -> 2.5 (best caption c4 0.6: c2 0.7 above, c0 0.6 tied)
    assert m['v2t']['R1'] == pytest.approx(100 / 3)
    assert m['v2t']['MdR'] == 2.0 and m['v2t']['MnR'] == pytest.approx((1 + 2 + 2.5) / 3)
    assert retrieval_ranks(HAND, torch.tensor(HAND_CV)).tolist() == [1.0, 1.0, 2.0, 2.0, 1.0]
    assert retrieval_metrics(HAND, torch.tensor(HAND_CV)) == m


def loop_v2t_best(sim, cv):
    "For each video: best caption score, then count the captions of other videos above / tied with it."
    S, V = sim.tolist(), sim.shape[1]
    ranks, hits = [], {k: 0. for k in (1, 5, 10, 50)}
    for j in range(V):
        best = max(S[i][j] for i in range(len(S)) if cv[i] == j)
        g = sum(1 for i in range(len(S)) if cv[i] != j and S[i][j] > best)
        t = sum(1 for i in range(len(S)) if cv[i] != j and S[i][j] == best)
        positions = range(g + 1, g + t + 2)
        ranks.append(sum(positions) / len(positions))
        for k in hits: hits[k] += sum(1 for p in positions if p <= k) / len(positions)
    out = {f'R{k}': 100 * h / V for k, h in hits.items()}
    return dict(out, MdR=statistics.median(ranks), MnR=sum(ranks) / V)


@pytest.mark.parametrize('levels', [3, 10_000])
def test_multi_sentence_matches_loops(levels):
    V, T = 9, 40
    cv = list(range(V)) + torch.randint(0, V, (T - V,)).tolist()
    random.Random(1).shuffle(cv)
    sim = torch.randint(0, levels, (T, V)).float()
    want = {'t2v': loop_direction(sim.tolist(), cv), 'v2t': loop_v2t_best(sim, cv)}
    assert_metrics_close(retrieval_metrics(sim, cv), want)
    assert_metrics_close(retrieval_metrics(sim, cv, chunk_elems=7), want)


def test_one_caption_per_video_in_any_order_is_the_square_case():
    sim = torch.randint(0, 4, (6, 6)).float()
    perm = torch.randperm(6)
    assert_metrics_close(retrieval_metrics(sim[perm], perm), retrieval_metrics(sim))


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_raises_with_position(bad):
    sim = torch.rand(4, 5)
    sim[1, 3] = bad; sim[2, 0] = bad
    for f in (lambda: retrieval_metrics(sim, [0, 1, 2, 3]), lambda: retrieval_ranks(sim, [0, 1, 2, 3]),
              lambda: recall_at(sim, [0, 1, 2, 3], 1), lambda: dual_softmax(sim), lambda: metrics_rows(sim, [0, 1, 2, 3])):
        with pytest.raises(ValueError, match=r'2 non-finite.*\(1, 3\)'): f()
    with pytest.raises(ValueError, match=r'bank_sim.*1 non-finite.*\(0, 2\)'):
        bank = torch.rand(3, 5); bank[0, 2] = bad
        qb_norm(torch.rand(4, 5), bank)


def test_shape_errors():
    with pytest.raises(ValueError, match=r'\(3, 4\).*square'): retrieval_metrics(torch.rand(3, 4))
    with pytest.raises(ValueError, match=r'2-D'): retrieval_metrics(torch.rand(4))
    with pytest.raises(ValueError, match=r'2-D'): retrieval_metrics(torch.rand(0, 4), [])
    with pytest.raises(ValueError, match=r'\(3,\).*\(3, 4\).*\(2,\)'): retrieval_metrics(torch.rand(3, 4), [0, 1])
    with pytest.raises(ValueError, match=r'\[0, 4\)'): retrieval_metrics(torch.rand(3, 4), [0, 1, 4])
    with pytest.raises(ValueError, match=r'\[0, 4\)'): retrieval_metrics(torch.rand(3, 4), [0, -1, 2])
    with pytest.raises(ValueError, match=r'integer'): retrieval_metrics(torch.rand(3, 3), torch.tensor([0., 1., 2.]))
    with pytest.raises(ValueError, match=r'at least one caption.*column 3'): retrieval_metrics(torch.rand(4, 4), [0, 1, 2, 2])
    with pytest.raises(ValueError, match=r'\(3,\)'): retrieval_ranks(torch.rand(3, 4), torch.tensor([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r'\[0, 4\)'): recall_at(torch.rand(3, 4), [0, 1, 9], 1)
    with pytest.raises(ValueError, match=r'positive integer'): recall_at(torch.rand(3, 4), [0, 1, 2], 0)
    with pytest.raises(ValueError, match=r'same 4 gallery items'): qb_norm(torch.rand(3, 4), torch.rand(5, 3))
    with pytest.raises(ValueError, match=r'k must be in \[1, 4\]'): qb_norm(torch.rand(3, 4), torch.rand(5, 4), k=5)


# ---------------------------------------------------------------- DSL

def loop_dsl(S, temp):
    T, V = len(S), len(S[0])
    Z = [sum(math.exp(temp * S[a][j]) for a in range(T)) for j in range(V)]
    return [[S[i][j] * math.exp(temp * S[i][j]) / Z[j] for j in range(V)] for i in range(T)]


@pytest.mark.parametrize('temp', [1.0, 10.0, 100.0])
def test_dual_softmax_matches_loop(temp):
    S = torch.rand(6, 4, dtype=torch.float64) * 2 - 1
    # atol=0: at temp 100 most entries are far below float64's default atol of 1e-7 (measured error 1e-14 relative)
    torch.testing.assert_close(dual_softmax(S, temp), torch.tensor(loop_dsl(S.tolist(), temp), dtype=torch.float64), rtol=1e-10, atol=0)
    assert not torch.allclose(dual_softmax(S, temp), dual_softmax(S.T, temp).T)     # the two directions differ


def test_dsl_row_uses_each_direction():
    S = torch.rand(8, 8, dtype=torch.float64)
    rows = metrics_rows(S, dsl=True)
    assert list(rows) == ['plain', 'DSL']
    t2v_ref = torch.tensor(loop_dsl(S.tolist(), 100.0), dtype=torch.float64)
    v2t_ref = torch.tensor(loop_dsl(S.T.tolist(), 100.0), dtype=torch.float64)     # [V, T]: rows are videos
    assert_metrics_close(rows['DSL'], {'t2v': loop_metrics(t2v_ref)['t2v'], 'v2t': loop_metrics(v2t_ref)['t2v']})
    assert_metrics_close(rows['plain'], loop_metrics(S))


# ---------------------------------------------------------------- QB-Norm

def loop_qb(S, B, beta, k):
    "Dynamic inverted softmax in its paper form exp(beta s) / sum_q exp(beta b_q); inactive rows raw."
    V = len(S[0])
    active = set()
    for row in B:
        active |= set(sorted(range(V), key=lambda j: -row[j])[:k])
    Z = [sum(math.exp(beta * row[j]) for row in B) for j in range(V)]
    out, flags = [], []
    for row in S:
        top = max(range(V), key=lambda j: row[j])
        flags.append(top in active)
        out.append([math.exp(beta * row[j]) / Z[j] for j in range(V)] if top in active else list(row))
    return out, flags


@pytest.mark.parametrize('k', [1, 2])
def test_qb_norm_matches_loop(k):
    S = torch.rand(10, 6, dtype=torch.float64)
    B = torch.rand(7, 6, dtype=torch.float64)
    B[:, 5] -= 1                     # video 5 is never near the top of a bank query
    S[0, 5] = 2.0                    # so query 0 (top-1 = video 5) is outside the activation set
    ref, flags = loop_qb(S.tolist(), B.tolist(), 5.0, k)
    assert not flags[0] and any(flags)
    got = qb_norm(S, B, beta=5.0, k=k)
    ref = torch.tensor(ref, dtype=torch.float64)
    for i, active in enumerate(flags):
        if active: torch.testing.assert_close(got[i], ref[i].log())     # the log of the paper's ratio
        else: assert torch.equal(got[i], S[i])                           # outside the set: unchanged
    assert activation_set(B, k).tolist() == [j in {j for row in B.tolist() for j in sorted(range(6), key=lambda j: -row[j])[:k]} for j in range(6)]


def test_qb_norm_hand_case():
    bank = torch.tensor([[0.9, 0.2, 0.5], [0.8, 0.3, 0.6], [0.1, 0.7, 0.6]])
    assert activation_set(bank).tolist() == [True, True, False]
    test = torch.tensor([[0.50, 0.45, 0.10], [0.10, 0.20, 0.60]])
    out = qb_norm(test, bank, beta=20.0)
    assert torch.equal(out[1], test[1])
    assert out[0].argmax().item() == 1 and test[0].argmax().item() == 0     # the bank's favourite video 0 loses the top


def test_qb_norm_row_in_metrics_rows():
    S = torch.rand(9, 9, dtype=torch.float64)
    B = torch.rand(20, 9, dtype=torch.float64)
    B[:, 8] -= 1; S[2, 8] = S[5, 8] = 2.0          # queries 2 and 5 stay raw, the others are normalised
    rows = metrics_rows(S, bank_sim=B, qb_beta=5.0)
    assert list(rows) == ['plain', 'QB-Norm']
    ref, flags = loop_qb(S.tolist(), B.tolist(), 5.0, 1)
    assert any(flags) and not flags[2] and not flags[5]
    want_t2v = loop_direction(ref, range(9))           # rows are ranked alone: exp-form and raw rows mix fine
    assert_metrics_close({'t2v': rows['QB-Norm']['t2v'], 'v2t': rows['QB-Norm']['v2t']},
                         {'t2v': want_t2v, 'v2t': loop_metrics(S)['v2t']})
    assert_metrics_close(rows['plain'], loop_metrics(S))


def test_rows_never_change_plain():
    S = torch.randint(0, 5, (12, 12)).float()
    B = torch.rand(30, 12)
    plain = retrieval_metrics(S)
    rows = metrics_rows(S, bank_sim=B, dsl=True)
    assert list(rows) == ['plain', 'QB-Norm', 'DSL'] and rows['plain'] == plain
    assert list(metrics_rows(S)) == ['plain']
    rows_ms = metrics_rows(HAND, HAND_CV, bank_sim=torch.rand(4, 3), dsl=True)
    assert rows_ms['plain'] == retrieval_metrics(HAND, HAND_CV)


# ---------------------------------------------------------------- the table

def test_format_metrics():
    rows = {'plain': {'t2v': dict(R1=12.34, R5=40.0, R10=55.56, R50=90.0, MdR=7.0, MnR=20.26),
                      'v2t': dict(R1=11.0, R5=39.0, R10=54.0, R50=89.0, MdR=8.5, MnR=1000.04)},
            'QB-Norm': {'t2v': dict(R1=14.0, R5=41.0, R10=56.0, R50=91.0, MdR=6.0, MnR=19.0),
                        'v2t': dict(R1=11.0, R5=39.0, R10=54.0, R50=89.0, MdR=8.5, MnR=1000.04)}}
    s = format_metrics(rows, title='my run')
    lines = s.splitlines()
    assert lines[0] == 'my run'
    assert all(h in lines[1] for h in ('t2v', 'v2t', 'R@1', 'R@5', 'R@10', 'R@50', 'MdR', 'MnR'))
    plain = next(l for l in lines if l.startswith('plain'))
    assert [x.split() for x in plain.split('|')[1:]] == [['12.3', '40.0', '55.6', '90.0', '7.0', '20.3'],
                                                          ['11.0', '39.0', '54.0', '89.0', '8.5', '1000.0']]
    assert sum(l.startswith('QB-Norm') for l in lines) == 1
    assert 'my run' not in format_metrics(rows)
    with pytest.raises(ValueError, match="'bad'"): format_metrics({'bad': {'t2v': {'R1': 1.0}}})
    # a real row formats too, one line per label
    s2 = format_metrics(metrics_rows(torch.rand(5, 5), dsl=True))
    assert [l.split()[0] for l in s2.splitlines()[2:]] == ['plain', 'DSL']

"""glscl.metrics (ranks, R@K, MdR, MnR, multi-sentence, DSL, QB-Norm, the table) against slow loop references written
here."""
import math
import random
import statistics
import pytest
import torch
import glscl.metrics as metrics
from glscl.metrics import (retrieval_ranks, recall_at, retrieval_metrics, dual_softmax, qb_norm, activation_set,
                           metrics_rows, format_metrics, per_query_counts, per_query_ranks, metrics_from_counts,
                           per_video_best, metric_interval, compare, format_compare, format_interval, paper_inside,
                           v2t_note, V2T_PROTOCOLS)

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
    ranks = [loop_rank(r, c) for r, c in zip(rows, targets, strict=True)]
    out = {f'R{k}': 100 * sum(loop_hit(r, c, k) for r, c in zip(rows, targets, strict=True)) / len(rows)
           for k in (1, 5, 10, 50)}
    return dict(out, MdR=statistics.median(ranks), MnR=sum(ranks) / len(ranks))

def loop_metrics(sim):
    S = sim.tolist()
    n = len(S)
    return {'t2v': loop_direction(S, range(n)),
            'v2t': loop_direction([list(c) for c in zip(*S, strict=True)], range(n))}

def assert_metrics_close(got, want, tol=1e-9):
    for d in ('t2v', 'v2t'):
        assert list(got[d]) == KEYS
        for k in KEYS:
            assert abs(got[d][k] - want[d][k]) <= tol * max(1, abs(want[d][k])), (d, k, got[d][k], want[d][k])


# ---------------------------------------------------------------- ranks and recall

def test_exports():
    import glscl.ranking as ranking
    assert {'retrieval_ranks', 'recall_at', 'retrieval_metrics', 'dual_softmax', 'qb_norm', 'metrics_rows',
            'format_metrics', 'V2T_PROTOCOLS'} <= set(ranking.__all__)
    assert {'per_query_ranks', 'per_query_counts', 'metric_interval', 'compare',
            'format_compare'} <= set(metrics.__all__)
    assert all(getattr(metrics, n) is getattr(ranking, n) for n in ranking.__all__)  # glscl.metrics gathers 12a's names


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
    assert_metrics_close(retrieval_metrics(sim, cv, v2t_protocol='per-caption'), want)
    assert_metrics_close(retrieval_metrics(sim, cv, chunk_elems=7, v2t_protocol='per-caption'), want)


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
              lambda: recall_at(sim, [0, 1, 2, 3], 1), lambda: dual_softmax(sim),
              lambda: metrics_rows(sim, [0, 1, 2, 3])):
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
    with pytest.raises(ValueError, match=r'at least one caption.*column 3'):
        retrieval_metrics(torch.rand(4, 4), [0, 1, 2, 2])
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
    torch.testing.assert_close(dual_softmax(S, temp), torch.tensor(loop_dsl(S.tolist(), temp), dtype=torch.float64),
                               rtol=1e-10, atol=0)
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
    assert activation_set(B, k).tolist() == [
        j in {j for row in B.tolist() for j in sorted(range(6), key=lambda j: -row[j])[:k]} for j in range(6)]


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
    plain = next(ln for ln in lines if ln.startswith('plain'))
    assert [x.split() for x in plain.split('|')[1:]] == [['12.3', '40.0', '55.6', '90.0', '7.0', '20.3'],
                                                          ['11.0', '39.0', '54.0', '89.0', '8.5', '1000.0']]
    assert sum(ln.startswith('QB-Norm') for ln in lines) == 1
    assert 'my run' not in format_metrics(rows)
    with pytest.raises(ValueError, match="'bad'"): format_metrics({'bad': {'t2v': {'R1': 1.0}}})
    # a real row formats too, one line per label
    s2 = format_metrics(metrics_rows(torch.rand(5, 5), dsl=True))
    assert [ln.split()[0] for ln in s2.splitlines()[2:]] == ['plain', 'DSL']


# ---------------------------------------------------------------- video-to-text: the family's protocol (issue 24)

def loop_v2t_family_counts(S, cv, V):
    "Per video j: best score of its own captions; per other video u the best of u's captions; count those above / tied."
    out = []
    for j in range(V):
        own = max(S[i][j] for i in range(len(S)) if cv[i] == j)
        others = [max(S[i][j] for i in range(len(S)) if cv[i] == u) for u in range(V) if u != j]
        out.append((sum(1 for x in others if x > own), sum(1 for x in others if x == own)))
    return out

def loop_summary(counts):
    "R@K, MdR, MnR from a list of per-query (greater, ties), by enumerating the equally likely positions."
    ranks, hits = [], {k: 0. for k in (1, 5, 10, 50)}
    for g, t in counts:
        positions = range(g + 1, g + t + 2)
        ranks.append(sum(positions) / len(positions))
        for k in hits: hits[k] += sum(1 for p in positions if p <= k) / len(positions)
    return dict({f'R{k}': 100 * h / len(counts) for k, h in hits.items()}, MdR=statistics.median(ranks),
                MnR=sum(ranks) / len(ranks))


@pytest.mark.parametrize('levels', [3, 10_000])          # 3 levels: many ties between videos' best captions
def test_v2t_family_protocol_matches_loop(levels):
    V, T = 9, 45
    cv = list(range(V)) + torch.randint(0, V, (T - V,)).tolist()
    random.Random(2).shuffle(cv)
    sim = torch.randint(0, levels, (T, V)).float()
    want = loop_summary(loop_v2t_family_counts(sim.tolist(), cv, V))
    for kw in ({}, dict(v2t_protocol='family'), dict(chunk_elems=7)):
        got = retrieval_metrics(sim, cv, **kw)
        assert_metrics_close(got, {'t2v': loop_direction(sim.tolist(), cv), 'v2t': want})
    g, t = per_query_counts(sim, cv)['v2t']
    assert list(zip(g.tolist(), t.tolist(), strict=True)) == loop_v2t_family_counts(sim.tolist(), cv, V)
    B = per_video_best(sim, torch.tensor(cv), chunk_elems=10)
    S = sim.tolist()
    assert B.tolist() == [[max(S[i][v] for i in range(T) if cv[i] == u) for u in range(V)] for v in range(V)]


def test_family_and_per_caption_differ_on_near_duplicates():
    dup = torch.tensor([[0.70, 0.1, 0.2], [0.80, 0.9, 0.1], [0.79, 0.9, 0.1], [0.78, 0.9, 0.1], [0.77, 0.9, 0.1],
                        [0.75, 0.2, 0.8]])
    cv = [0, 1, 1, 1, 1, 2]
    assert per_query_ranks(dup, cv)['v2t'].tolist() == [3.0, 1.0, 1.0]
    assert per_query_ranks(dup, cv, 'per-caption')['v2t'].tolist() == [6.0, 1.0, 1.0]
    fam, per = retrieval_metrics(dup, cv)['v2t'], retrieval_metrics(dup, cv, v2t_protocol='per-caption')['v2t']
    assert fam['R1'] == per['R1'] and fam['R5'] == 100.0 and per['R5'] == pytest.approx(200 / 3)
    # with ties R@1 differs too: own best tied with 3 captions of one other video = 1 video (family) or 3 captions
    tie = torch.tensor([[0.5, 0.0], [0.5, 0.9], [0.5, 0.9], [0.5, 0.9]])
    assert retrieval_metrics(tie, [0, 1, 1, 1])['v2t']['R1'] == pytest.approx(100 * (1 / 2 + 1) / 2)
    assert retrieval_metrics(tie, [0, 1, 1, 1],
                             v2t_protocol='per-caption')['v2t']['R1'] == pytest.approx(100 * (1 / 4 + 1) / 2)
    with pytest.raises(ValueError, match="'family', 'per-caption'"):
        retrieval_metrics(dup, cv, v2t_protocol='per_caption')


@pytest.mark.parametrize('levels', [3, 10_000])
def test_single_caption_and_paragraph_splits_are_unchanged(levels):
    """MSR-VTT 1k-A (square) and paragraph benchmarks (one pair per video, any order): both protocols = the old
    per-caption code."""
    sim = torch.randint(0, levels, (15, 15)).float()
    old = loop_metrics(sim)                                   # the transpose's diagonal, as before issue 24
    for p in V2T_PROTOCOLS: assert_metrics_close(retrieval_metrics(sim, v2t_protocol=p), old)
    perm = torch.randperm(15)                                 # a paragraph split: one caption per video, in file order
    for p in V2T_PROTOCOLS: assert_metrics_close(retrieval_metrics(sim[perm], perm, v2t_protocol=p), old)
    assert metrics_rows(sim, dsl=True) == metrics_rows(sim, dsl=True, v2t_protocol='per-caption')


def test_v2t_note_and_table_label():
    assert v2t_note(torch.arange(6)) == '' and v2t_note([3, 1, 0, 2]) == ''
    assert "family's protocol" in v2t_note([0, 0, 1]) and 'per caption' in v2t_note([0, 0, 1], 'per-caption')
    rows = metrics_rows(HAND, HAND_CV)
    s = format_metrics(rows, note=v2t_note(HAND_CV))
    assert s.splitlines()[-1].startswith("v2t: video-to-text by the family's protocol")


# ---------------------------------------------------------------- per-query results and the bootstrap (issue 20)

def test_per_query_results_give_the_metrics_exactly():
    for sim, cv in ((torch.randint(0, 4, (12, 12)).float(), None),
                    (torch.randint(0, 5, (40, 8)).float(), torch.arange(40) % 8)):
        for p in V2T_PROTOCOLS:
            counts, ranks = per_query_counts(sim, cv, p), per_query_ranks(sim, cv, p)
            assert {d: metrics_from_counts(*c) for d, c in counts.items()} == retrieval_metrics(sim, cv, v2t_protocol=p)
            assert ranks['t2v'].shape == (sim.shape[0],) and ranks['v2t'].shape == (sim.shape[1],)
            S = sim.tolist(); cvl = list(range(len(S))) if cv is None else cv.tolist()
            assert ranks['t2v'].tolist() == [loop_rank(S[q], cvl[q]) for q in range(len(S))]


def loop_query_counts(S, cv, V):
    "Per direction, per query: (greater, ties) by loops (v2t: the family's protocol)."
    return {'t2v': [loop_counts(S[q], cv[q]) for q in range(len(S))], 'v2t': loop_v2t_family_counts(S, cv, V)}

def loop_percentile(xs, p):
    xs = sorted(xs); x = p * (len(xs) - 1); i = int(x)
    return xs[i] + (x - i) * (xs[min(i + 1, len(xs) - 1)] - xs[i])

def loop_bootstrap(sides, cv, n_boot, seed, d):
    """Slow reference of the documented draws: a torch.Generator seeded with `seed`; per draw, run indices for each side
    in order (a later side with as many runs as the first reuses its indices), then Q query indices, then Q uniforms u
    that break ties (rank = greater + 1 + floor(u (ties + 1))); the statistic is the mean over the drawn runs of each
    run's metric on the drawn queries' ranks."""
    V = sides[0][0].shape[1]
    counts = [[loop_query_counts(s.tolist(), cv, V)[d] for s in runs] for runs in sides]
    Q = len(counts[0][0])
    paired = len({len(r) for r in sides}) == 1
    g = torch.Generator().manual_seed(seed)
    out = [[] for _ in sides]
    for _ in range(n_boot):
        draws = []
        for i, runs in enumerate(sides):
            draws.append(draws[0] if paired and i else torch.randint(len(runs), (len(runs),), generator=g).tolist())
        q = torch.randint(Q, (Q,), generator=g).tolist()
        u = torch.rand(Q, generator=g, dtype=torch.float64).tolist()
        for i in range(len(sides)):
            per_run = []
            for r in draws[i]:
                ranks = [counts[i][r][qj][0] + 1 + math.floor(u[j] * (counts[i][r][qj][1] + 1))
                         for j, qj in enumerate(q)]
                per_run.append([100 * sum(x <= k for x in ranks) / Q for k in (1, 5, 10, 50)]
                               + [statistics.median(ranks), sum(ranks) / Q])
            out[i].append([sum(x[c] for x in per_run) / len(per_run) for c in range(6)])
    return out

def loop_point(runs, cv, d):
    "The value: the mean over runs of each run's exact metrics (expected hits and ranks under random tie-breaking)."
    V = runs[0].shape[1]
    ms = [loop_summary(loop_query_counts(s.tolist(), cv, V)[d]) for s in runs]
    return [sum(m[k] for m in ms) / len(ms) for k in KEYS]

CASES = {
    'square, ties': (lambda: [torch.randint(0, 4, (14, 14)).float()],
                     lambda: [torch.randint(0, 4, (14, 14)).float()], None),
    'multi-caption': (lambda: [torch.randn(30, 6)], lambda: [torch.randn(30, 6)], [q % 6 for q in range(30)]),
    'runs paired 2 v 2': (lambda: [torch.randint(0, 6, (10, 10)).float() for _ in range(2)],
                          lambda: [torch.randint(0, 6, (10, 10)).float() for _ in range(2)], None),
    'runs unpaired 2 v 3': (lambda: [torch.randn(24, 8) for _ in range(2)],
                            lambda: [torch.randn(24, 8) for _ in range(3)], [q % 8 for q in range(24)]),
}

@pytest.mark.parametrize('case', list(CASES))
def test_interval_and_compare_match_the_loop_bootstrap(case):
    torch.manual_seed(11)
    mk_a, mk_b, cv = CASES[case]
    A, B = mk_a(), mk_b()
    cvl = cv if cv is not None else list(range(A[0].shape[0]))
    n_boot, seed, level = 60, 3, 0.9
    one = lambda runs: runs[0] if len(runs) == 1 else runs
    iv = metric_interval(one(A), cv, n_boot=n_boot, seed=seed, level=level)
    res = compare(one(A), one(B), cv, n_boot=n_boot, seed=seed, level=level)
    for d in ('t2v', 'v2t'):
        pa, pb = loop_point(A, cvl, d), loop_point(B, cvl, d)
        (sa,) = loop_bootstrap([A], cvl, n_boot, seed, d)
        sa2, sb2 = loop_bootstrap([A, B], cvl, n_boot, seed, d)
        for c, k in enumerate(KEYS):
            col = [x[c] for x in sa]
            want = (pa[c], loop_percentile(col, (1 - level) / 2), loop_percentile(col, (1 + level) / 2))
            assert iv[d][k] == pytest.approx(want, abs=1e-9), (case, d, k)
            diffs = [x[c] - y[c] for x, y in zip(sa2, sb2, strict=True)]
            lo, hi = loop_percentile(diffs, (1 - level) / 2), loop_percentile(diffs, (1 + level) / 2)
            r = res[d][k]
            assert (r['a'], r['b'], r['diff'],
                    r['lo'], r['hi']) == pytest.approx((pa[c], pb[c], pa[c] - pb[c], lo, hi), abs=1e-9), (case, d, k)
            better = (lo > 0) if k not in ('MdR', 'MnR') else (hi < 0)
            worse = (hi < 0) if k not in ('MdR', 'MnR') else (lo > 0)
            assert r['verdict'] == ('better' if better else 'worse' if worse else 'within noise')
    if len(A) == 1:                                        # one run: the value is the plain metric, exactly
        m = retrieval_metrics(A[0], cv)
        assert all(iv[d][k][0] == m[d][k] and res[d][k]['a'] == m[d][k] for d in ('t2v', 'v2t') for k in KEYS)


def test_deterministic_for_a_seed():
    a, b = torch.randn(50, 50), torch.randn(50, 50)
    assert compare(a, b, n_boot=200, seed=7) == compare(a, b, n_boot=200, seed=7)
    assert metric_interval(a, n_boot=200, seed=7) == metric_interval(a, n_boot=200, seed=7)
    assert metric_interval(a, n_boot=200, seed=7) != metric_interval(a, n_boot=200, seed=8)
    assert metric_interval([a], n_boot=200, seed=7) == metric_interval(a, n_boot=200, seed=7)      # a list of one run
    import glscl.metrics as M   # chunked draws: same
    old = M.BOOT_ELEMS
    try:
        M.BOOT_ELEMS = 50 * 7
        assert metric_interval(a, n_boot=200, seed=7) == metric_interval(a, n_boot=200, seed=7, level=0.95)
        chunked = metric_interval(a, n_boot=200, seed=7)
    finally: M.BOOT_ELEMS = old
    assert chunked == metric_interval(a, n_boot=200, seed=7)


def test_interval_width_shrinks_as_one_over_sqrt_queries():
    V, D = 40, 32
    g = torch.Generator().manual_seed(0)
    vids = torch.nn.functional.normalize(torch.randn(V, D, generator=g), dim=-1)
    def width(Q):
        cv = torch.arange(Q) % V
        caps = torch.nn.functional.normalize(vids[cv] + 0.45 * torch.randn(Q, D, generator=g), dim=-1)
        iv = metric_interval(caps @ vids.T, cv, n_boot=1500)['t2v']
        return {k: iv[k][2] - iv[k][1] for k in ('R1', 'MnR')}, iv['R1'][0]
    (w1, r1), (w4, r4) = width(400), width(1600)
    assert 20 < r1 < 80 and abs(r1 - r4) < 8                 # the same difficulty at both sizes
    for k in ('R1', 'MnR'): assert 1.7 < w1[k] / w4[k] < 2.3, (k, w1[k], w4[k])


def test_a_tied_similarity_never_looks_better_than_chance():
    V, T = 40, 800
    cv = torch.arange(T) % V
    flat = torch.full((T, V), 0.3)
    iv = metric_interval(flat, cv, n_boot=300)
    for d in ('t2v', 'v2t'):
        for k, chance in (('R1', 100 / V), ('R5', 500 / V), ('MnR', (V + 1) / 2)):
            v, lo, hi = iv[d][k]
            # the value is chance; the interval holds it
            assert abs(v - chance) < 1e-9 and lo < chance < hi, (d, k, iv[d][k])
    n_better = 0
    for s in range(20):                                      # a random matrix is chance too, in expectation
        r = compare(flat, torch.randn(T, V, generator=torch.Generator().manual_seed(s)), cv, n_boot=300)
        n_better += sum(r[d][k]['verdict'] == 'better' for d in ('t2v', 'v2t') for k in ('R1', 'R10', 'MnR'))
    assert n_better <= 3   # 120 verdicts at ~2.5% each by luck; ties-as-hits would give ~60
    # the square case: a random model has one hit at R@1 in expectation and none 37% of the time; the tie-breaking draws
    # keep the all-tied model from looking better than such an unlucky random one
    sq = torch.zeros(30, 30)
    for s in range(10):
        r = compare(sq, torch.randn(30, 30, generator=torch.Generator().manual_seed(s)), n_boot=300)
        assert all(r[d]['R1']['verdict'] != 'better' for d in ('t2v', 'v2t')), (s, r['t2v']['R1'], r['v2t']['R1'])


def test_seeds_combine_as_documented():
    good = torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1]])                                      # every rank 1
    bad = torch.tensor([[0., 1, 1], [1, 0, 1], [1, 1, 0]]) + torch.tensor([0., 0.1, 0.2])      # every rank 3, no ties
    iv = metric_interval([good, bad], n_boot=4000, level=0.4)
    # only the run draws matter: R@1 is 100 (both draws run 0, 1/4), 50 (1/2) or 0 (1/4); its 30% and 70% points are 50
    assert iv['t2v']['R1'] == (50.0, 50.0, 50.0)
    assert iv['t2v']['MdR'][0] == 2.0 and iv['t2v']['MnR'][0] == 2.0       # point: the mean of the runs' metrics
    wide = metric_interval([good, bad], n_boot=4000, level=0.9)['t2v']['R1']
    assert wide == (50.0, 0.0, 100.0)
    # paired by position: the same runs on both sides differ by exactly 0 in every draw
    same = compare([good, bad], [good, bad], n_boot=500)
    assert all(same[d][k]['lo'] == same[d][k]['hi'] == 0.0 and same[d][k]['verdict'] == 'within noise'
               for d in same for k in KEYS)
    # 2 runs against 3: drawn independently; B's R@1 = 100 * Binomial(3, 1/3) / 3, A's = 100 * Binomial(2, 1/2) / 2
    r = compare([good, bad], [good, bad, bad], n_boot=4000, level=0.9)['t2v']['R1']
    assert r['a'] == 50.0 and r['b'] == pytest.approx(100 / 3) and r['diff'] == pytest.approx(50 - 100 / 3)
    assert r['lo'] == pytest.approx(-200 / 3) and r['hi'] == pytest.approx(100.0) and r['verdict'] == 'within noise'
    # MdR: per run, then averaged: A's draws of (run 0, run 1) give (1 + 3) / 2
    assert compare([good, bad], [good, good])['t2v']['MdR']['a'] == 2.0


def test_compare_verdicts_and_errors():
    torch.manual_seed(0)
    V, D = 200, 32
    vids = torch.nn.functional.normalize(torch.randn(V, D), dim=-1)
    good = vids @ vids.T + 0.5 * torch.randn(V, V)
    worse = vids @ vids.T + 1.5 * torch.randn(V, V)
    r = compare(good, worse, n_boot=300)
    assert (r['t2v']['R1']['verdict'] == 'better' and r['t2v']['MnR']['verdict'] == 'better'
            and r['t2v']['MnR']['diff'] < 0)
    r2 = compare(worse, good, n_boot=300)
    assert r2['t2v']['R1']['verdict'] == 'worse' and r2['t2v']['MnR']['verdict'] == 'worse'
    with pytest.raises(ValueError, match='same queries'): compare(good, good[:, :10])
    with pytest.raises(ValueError, match=r'sim_b\[1\]'): compare(good, [good, good[:5]])
    with pytest.raises(ValueError, match='empty list'): metric_interval([])
    with pytest.raises(ValueError, match='n_boot'): compare(good, worse, n_boot=0)
    with pytest.raises(ValueError, match='level'): metric_interval(good, level=1.0)
    with pytest.raises(ValueError, match='non-finite'):
        compare(good, worse.masked_fill(torch.eye(V, dtype=torch.bool), float('nan')))
    s = format_compare(r, names=('ours', 'base'))
    lines = s.splitlines()
    assert 'ours - base' in lines[0] and '95% interval' in lines[0] and len(lines) == 2 + 12
    r1 = next(ln for ln in lines if ln.startswith('t2v R@1'))
    assert r1.split()[-1] == 'better' and f"{r['t2v']['R1']['a']:.1f}" in r1 and f"[{r['t2v']['R1']['lo']:+.1f}," in r1


def test_paper_inside_and_format_interval():
    iv = {'t2v': {k: (48.0, 46.4, 49.6) for k in KEYS}, 'v2t': {k: (47.0, 45.0, 49.0) for k in KEYS}}
    got = paper_inside(iv, {'t2v': {'R1': 48.1, 'R5': 51.0}, 'v2t': {'R1': 44.0}})
    assert got == {'t2v': {'R1': True, 'R5': False}, 'v2t': {'R1': False}}
    s = format_interval(iv, paper={'t2v': {'R1': 48.1, 'R5': 51.0}})
    assert '48.1 inside' in next(ln for ln in s.splitlines() if ln.startswith('t2v R@1 '))
    assert 'outside, ours lower' in next(ln for ln in s.splitlines() if ln.startswith('t2v R@5 '))
    with pytest.raises(ValueError, match='R2'): paper_inside(iv, {'t2v': {'R2': 1.0}})
    with pytest.raises(ValueError, match="'t2x'"): paper_inside(iv, {'t2x': {'R1': 1.0}})

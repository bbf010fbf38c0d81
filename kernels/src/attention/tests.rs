//! Randomised checks of every kernel path against a dense reference.

use super::*;

/// xorshift64 generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// One test batch: cache contents, block tables and queries.
struct Case {
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    bs: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    tables: Vec<Vec<u32>>,
    /// (start_pos, n_tokens) per sequence.
    shapes: Vec<(usize, usize)>,
    q: Vec<f32>,
}

impl Case {
    fn new(
        rng: &mut Rng,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
        bs: usize,
        shapes: Vec<(usize, usize)>,
    ) -> Case {
        let needed: Vec<usize> = shapes.iter().map(|&(s, n)| (s + n).div_ceil(bs)).collect();
        let n_blocks = needed.iter().sum::<usize>() + 3;
        // Shuffled physical block ids.
        let mut ids: Vec<u32> = (0..n_blocks as u32).collect();
        for i in (1..ids.len()).rev() {
            let j = rng.below(i + 1);
            ids.swap(i, j);
        }
        let mut tables = Vec::new();
        let mut next = 0;
        for &nb in &needed {
            tables.push(ids[next..next + nb].to_vec());
            next += nb;
        }
        let elems = n_blocks * n_kv * bs * hd;
        let k = (0..elems).map(|_| rng.f32()).collect();
        let v = (0..elems).map(|_| rng.f32()).collect();
        let total: usize = shapes.iter().map(|s| s.1).sum();
        let q = (0..total * n_heads * hd).map(|_| rng.f32() * 3.0).collect();
        Case {
            n_heads,
            n_kv,
            hd,
            bs,
            k,
            v,
            tables,
            shapes,
            q,
        }
    }

    fn seqs(&self) -> Vec<AttnSeq<'_>> {
        let mut off = 0;
        self.shapes
            .iter()
            .zip(&self.tables)
            .map(|(&(start_pos, n_tokens), table)| {
                let s = AttnSeq {
                    q_offset: off,
                    n_tokens,
                    start_pos,
                    block_table: table,
                };
                off += n_tokens;
                s
            })
            .collect()
    }

    fn view(&self) -> KvLayerView<'_> {
        KvLayerView {
            k: &self.k,
            v: &self.v,
            block_size: self.bs,
            n_kv_heads: self.n_kv,
            head_dim: self.hd,
        }
    }

    /// Dense reference: gather each position's K/V, full softmax per query, in f64.
    fn reference(&self, scale: f32) -> Vec<f32> {
        let (nh, hd, bs) = (self.n_heads, self.hd, self.bs);
        let group = nh / self.n_kv;
        let mut out = vec![0.0f32; self.q.len()];
        for s in self.seqs() {
            for t in 0..s.n_tokens {
                let row = (s.q_offset + t) * nh * hd;
                let n_ctx = s.start_pos + t + 1;
                for h in 0..nh {
                    let kvh = h / group;
                    let at = |buf: &[f32], p: usize| -> Vec<f64> {
                        let b = s.block_table[p / bs] as usize;
                        let o = ((b * self.n_kv + kvh) * bs + p % bs) * hd;
                        buf[o..o + hd].iter().map(|&x| f64::from(x)).collect()
                    };
                    let qh = &self.q[row + h * hd..row + (h + 1) * hd];
                    let scores: Vec<f64> = (0..n_ctx)
                        .map(|p| {
                            let kr = at(&self.k, p);
                            qh.iter().zip(&kr).map(|(&a, &b)| f64::from(a) * b).sum::<f64>()
                                * f64::from(scale)
                        })
                        .collect();
                    let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|&x| (x - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let mut o = vec![0.0f64; hd];
                    for (p, &w) in e.iter().enumerate() {
                        for (od, vd) in o.iter_mut().zip(at(&self.v, p)) {
                            *od += w / sum * vd;
                        }
                    }
                    for (d, od) in o.iter().enumerate() {
                        out[row + h * hd + d] = *od as f32;
                    }
                }
            }
        }
        out
    }
}

fn check_case(case: &Case, pools: &[ThreadPool]) {
    let scale = 1.0 / (case.hd as f32).sqrt();
    let want = case.reference(scale);
    let seqs = case.seqs();
    let view = case.view();
    for isa in Isa::available() {
        for pool in pools {
            let mut got = vec![f32::NAN; case.q.len()];
            paged_attention_with_isa(isa, pool, &case.q, case.n_heads, &seqs, &view, scale, &mut got);
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2e-5 * (1.0 + w.abs()),
                    "{} threads {} hd {} bs {} heads {}/{} elem {i}: got {g}, want {w}",
                    isa.name(),
                    pool.n_threads(),
                    case.hd,
                    case.bs,
                    case.n_heads,
                    case.n_kv
                );
            }
        }
    }
}

#[test]
fn random_batches_match_reference() {
    let pools = [ThreadPool::new(1), ThreadPool::new(2), ThreadPool::new(3)];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for &bs in &[1usize, 16, 32] {
        for &(n_heads, n_kv) in &[(3usize, 3usize), (9, 3), (4, 1)] {
            for &hd in &[64usize, 32, 128, 24] {
                // Mixed batch: decode tokens at various positions, a fresh prefill, a chunked
                // prefill continuing a sequence, and a single-token prompt.
                let mut shapes = vec![
                    (rng.below(70), 1),
                    (0, 1 + rng.below(40)),
                    (17 + rng.below(20), 1 + rng.below(20)),
                    (0, 1),
                    (rng.below(100), 1),
                ];
                if bs == 1 {
                    shapes.truncate(3);
                }
                let case = Case::new(&mut rng, n_heads, n_kv, hd, bs, shapes);
                check_case(&case, &pools);
            }
        }
    }
}

#[test]
fn split_k_decode_matches_reference() {
    // Few units (batch-1 decode) and long contexts trigger the split-K path; the second case
    // also has a short sequence whose later parts are empty.
    let pools = [ThreadPool::new(2), ThreadPool::new(3)];
    let mut rng = Rng(4242);
    for &(n_heads, n_kv, hd, bs) in &[
        (9usize, 3usize, 64usize, 16usize),
        (4, 1, 64, 32),
        (6, 2, 24, 1),
        (2, 1, 128, 16),
    ] {
        check_case(
            &Case::new(&mut rng, n_heads, n_kv, hd, bs, vec![(700, 1)]),
            &pools,
        );
        check_case(
            &Case::new(&mut rng, n_heads, n_kv, hd, bs, vec![(3, 1), (900, 1)]),
            &pools,
        );
    }
}

#[test]
fn long_context_and_large_scores() {
    let pools = [ThreadPool::new(2)];
    let mut rng = Rng(99);
    let mut case = Case::new(&mut rng, 9, 3, 64, 16, vec![(300, 1), (0, 5), (250, 3)]);
    // Large query values make the running max move a lot between tiles.
    for x in case.q.iter_mut() {
        *x *= 20.0;
    }
    check_case(&case, &pools);
}

#[test]
fn untouched_rows_and_empty_batches() {
    let pool = ThreadPool::new(2);
    let mut rng = Rng(7);
    let case = Case::new(&mut rng, 3, 3, 64, 16, vec![(5, 2)]);
    let table = &case.tables[0];
    // The only sequence starts at row 1; row 0 must stay as it was.
    let seqs = [AttnSeq {
        q_offset: 1,
        n_tokens: 1,
        start_pos: 5,
        block_table: table,
    }];
    let q = vec![0.5f32; 2 * 3 * 64];
    let mut out = vec![-7.0f32; q.len()];
    paged_attention(&pool, &q, 3, &seqs, &case.view(), 0.125, &mut out);
    assert!(out[..192].iter().all(|&x| x == -7.0));
    assert!(out[192..].iter().all(|&x| x != -7.0 && x.is_finite()));
    paged_attention(&pool, &q, 3, &[], &case.view(), 0.125, &mut out);
}

#[test]
#[should_panic(expected = "block table too short")]
fn short_block_table_panics() {
    let pool = ThreadPool::new(1);
    let k = vec![0.0f32; 4 * 64 * 16];
    let view = KvLayerView {
        k: &k,
        v: &k,
        block_size: 16,
        n_kv_heads: 1,
        head_dim: 64,
    };
    let seqs = [AttnSeq {
        q_offset: 0,
        n_tokens: 1,
        start_pos: 16,
        block_table: &[0],
    }];
    let q = vec![0.0f32; 64];
    let mut out = vec![0.0f32; 64];
    paged_attention(&pool, &q, 1, &seqs, &view, 1.0, &mut out);
}

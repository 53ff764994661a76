//! The assignor's pipeline (capgroup.assignor.balance.reference_assign), step by step, on
//! flat vectors. Every step mirrors the Python one it is named after, including the order
//! of floating-point operations and the tie-breaking of every heap and sort, so that the
//! plans are identical (tests/assignor/test_native.py holds them to it).

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

pub const LOAD_BASE: i64 = 1000;

/// Heap entry of the receivers: (key, member, version), ordered like the Python tuple, packed
/// in two words that compare as integers: the key's bits mapped to an order-preserving
/// unsigned (keys are never NaN: loads are finite, weights positive and finite), then the
/// member in the high half of the second word and the version in the low half (both below
/// 2^32: members are counted in 32 bits, and a version counts one member's changes). A
/// receiver heap pops once per partition placed, and its comparisons were most of placing a
/// group with ingress rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyEntry(u64, u64);

impl KeyEntry {
    #[inline]
    pub fn new(key: f64, member: usize, version: i64) -> Self {
        let bits = key.to_bits();
        // Non-negative floats order as their bits; negative ones in reverse, below them.
        let key = if bits >> 63 == 0 {
            bits | 1 << 63
        } else {
            !bits
        };
        KeyEntry(key, (member as u64) << 32 | (version as u64 & 0xffff_ffff))
    }

    #[inline]
    pub fn member(self) -> usize {
        (self.1 >> 32) as usize
    }

    #[inline]
    pub fn version(self) -> i64 {
        (self.1 & 0xffff_ffff) as i64
    }
}

type MinHeap<T> = BinaryHeap<Reverse<T>>;

/// ``math.fsum``: the correctly rounded sum (CPython's algorithm). None on overflow
/// (CPython raises OverflowError; the caller then lets the numpy path raise it).
pub fn fsum(xs: &[f64]) -> Option<f64> {
    if let Some(sum) = exact_sum_nonnegative(xs) {
        return Some(sum);
    }
    shewchuk_sum(xs)
}

/// The correctly rounded (half to even) sum of non-negative finite values below 2^1000, as
/// ``math.fsum`` returns it, in one cheap pass: every value's 53-bit significand is added
/// into a 128-bit accumulator of its exponent, the accumulators into one exact fixed-point
/// integer (in units of 2^-1074), which is rounded once. None for any other input (a
/// negative, too large or non-finite value), which :func:`shewchuk_sum` then adds.
/// Load units are computed from such values (cleaned rates), a million of them per plan.
fn exact_sum_nonnegative(xs: &[f64]) -> Option<f64> {
    const LIMBS: usize = 36; // 2,304 bits: above 2^1000 x 2^64 values in units of 2^-1074
    let mut acc = [0u128; 2048];
    for &x in xs {
        let bits = x.to_bits();
        let e = (bits >> 52) as usize; // the sign bit makes this at least 2048
        if e >= 2023 {
            return None; // negative, 2^1000 or more, infinite or NaN
        }
        let m = bits & ((1u64 << 52) - 1);
        // value = m' x 2^(max(e, 1) - 1075): the significand at bit max(e, 1) - 1.
        if e == 0 {
            acc[1] += m as u128;
        } else {
            acc[e] += (m | (1u64 << 52)) as u128;
        }
    }
    // The exact sum as a little-endian integer of LIMBS words.
    let mut n = [0u64; LIMBS];
    for (e, &a) in acc.iter().enumerate().skip(1) {
        if a == 0 {
            continue;
        }
        let shift = e - 1;
        let (word, bit) = (shift / 64, shift % 64);
        // a < 2^128 shifted by bit < 64: three words.
        let low = (a << bit) as u64;
        let mid = ((a << bit) >> 64) as u64; // the bits a << bit loses are above 128
        let high = if bit == 0 {
            0
        } else {
            (a >> (128 - bit)) as u64
        };
        let mut carry = 0u128;
        for (k, part) in [low, mid, high].into_iter().enumerate() {
            let total = n[word + k] as u128 + part as u128 + carry;
            n[word + k] = total as u64;
            carry = total >> 64;
        }
        let mut k = word + 3;
        while carry != 0 && k < LIMBS {
            let total = n[k] as u128 + carry;
            n[k] = total as u64;
            carry = total >> 64;
            k += 1;
        }
    }
    let Some(top) = (0..LIMBS).rev().find(|&k| n[k] != 0) else {
        return Some(0.0);
    };
    let h = top * 64 + 63 - n[top].leading_zeros() as usize; // highest set bit
    let bit = |i: usize| (n[i / 64] >> (i % 64)) & 1;
    if h <= 52 {
        // Below 2^-1021: exact on the subnormal grid.
        return Some(n[0] as f64 * f64::from_bits(1));
    }
    let mut mant = 0u64;
    for i in (h - 52..=h).rev() {
        mant = (mant << 1) | bit(i);
    }
    let round = bit(h - 53) == 1;
    let sticky = (0..h - 53).any(|i| bit(i) == 1);
    let mut h = h;
    if round && (sticky || mant & 1 == 1) {
        mant += 1;
        if mant == 1u64 << 53 {
            mant >>= 1;
            h += 1;
        }
    }
    let biased = (h - 51) as u64; // the value is mant / 2^52 x 2^(h - 1074)
    if biased >= 2047 {
        return None;
    }
    Some(f64::from_bits((biased << 52) | (mant & ((1u64 << 52) - 1))))
}

/// ``math.fsum`` as CPython computes it (Shewchuk's partials), for any input.
fn shewchuk_sum(xs: &[f64]) -> Option<f64> {
    let mut p: Vec<f64> = Vec::with_capacity(8);
    for &xsave in xs {
        let mut x = xsave;
        let mut i = 0usize;
        for jj in 0..p.len() {
            let mut y = p[jj];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                p[i] = lo;
                i += 1;
            }
            x = hi;
        }
        p.truncate(i);
        if x != 0.0 {
            if !x.is_finite() {
                return None;
            }
            p.push(x);
        }
    }
    let mut n = p.len();
    let mut hi = 0.0f64;
    let mut lo = 0.0f64;
    if n > 0 {
        n -= 1;
        hi = p[n];
        while n > 0 {
            let x = hi;
            n -= 1;
            let y = p[n];
            hi = x + y;
            let yr = hi - x;
            lo = y - yr;
            if lo != 0.0 {
                break;
            }
        }
        if n > 0 && ((lo < 0.0 && p[n - 1] < 0.0) || (lo > 0.0 && p[n - 1] > 0.0)) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
    }
    Some(hi)
}

pub fn clean_rate(r: f64) -> f64 {
    if r.is_finite() && r > 0.0 {
        r
    } else {
        0.0
    }
}

/// Resolved claims: ``_resolve_claims``.
pub struct Claims {
    pub owner: Vec<i64>,
    pub owner_rate: Vec<f64>,
    /// partition -> sorted distinct members tied at the top generation.
    pub conflicts: BTreeMap<usize, Vec<usize>>,
    pub stale: u64,
    pub bogus: u64,
}

/// One claim: (partition index or -1, member, generation, raw rate).
pub struct Claim {
    pub part: i64,
    pub member: usize,
    pub gen: i64,
    pub rate: f64,
}

pub fn resolve_claims(n_parts: usize, claims: &[Claim], generation: i64) -> Claims {
    let mut owner = vec![-1i64; n_parts];
    let mut owner_rate = vec![0.0f64; n_parts];
    // A group at rest (or a fresh one): every partition claimed once at most, and no claim
    // from the future. Then each claim names the owner and nothing is stale or tied: two
    // columns to write, not six to keep (with ingress rates a member's claims lie far apart,
    // and each column missed the cache once per claim).
    let mut once = true;
    for c in claims {
        if c.part < 0 {
            continue;
        }
        let j = c.part as usize;
        if c.gen > generation || owner[j] >= 0 {
            once = false;
            break;
        }
        owner[j] = c.member as i64;
        owner_rate[j] = clean_rate(c.rate);
    }
    if once {
        return Claims {
            owner,
            owner_rate,
            conflicts: BTreeMap::new(),
            stale: 0,
            bogus: 0,
        };
    }
    owner.fill(-1);
    owner_rate.fill(0.0);
    let mut top_gen = vec![i64::MIN; n_parts];
    let mut top_count = vec![0u32; n_parts];
    let mut total = vec![0u32; n_parts];
    let mut tied = vec![false; n_parts];
    let mut bogus = 0u64;
    for c in claims {
        if c.part < 0 {
            continue;
        }
        let j = c.part as usize;
        if c.gen > generation {
            bogus += 1;
            continue;
        }
        let r = clean_rate(c.rate);
        total[j] += 1;
        if total[j] == 1 || c.gen > top_gen[j] {
            top_gen[j] = c.gen;
            top_count[j] = 1;
            owner[j] = c.member as i64;
            tied[j] = false;
            owner_rate[j] = r;
        } else if c.gen == top_gen[j] {
            top_count[j] += 1;
            if owner[j] != c.member as i64 {
                tied[j] = true;
            }
            if r > owner_rate[j] {
                owner_rate[j] = r;
            }
        }
    }
    let mut stale = 0u64;
    let mut conflicts: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for j in 0..n_parts {
        stale += (total[j] - top_count[j]) as u64;
        if tied[j] {
            conflicts.insert(j, Vec::new());
        }
    }
    if !conflicts.is_empty() {
        for c in claims {
            if c.part < 0 || c.gen > generation {
                continue;
            }
            let j = c.part as usize;
            if tied[j] && c.gen == top_gen[j] {
                conflicts.get_mut(&j).unwrap().push(c.member);
            }
        }
        for (j, who) in conflicts.iter_mut() {
            who.sort_unstable();
            who.dedup();
            owner[*j] = -1;
            owner_rate[*j] = 0.0;
        }
    }
    Claims {
        owner,
        owner_rate,
        conflicts,
        stale,
        bogus,
    }
}

/// ``_load_units``. None when ``fsum`` overflows.
pub fn load_units(spec_rate: &[f64], owner_rate: &[f64]) -> Option<Vec<i64>> {
    let n = spec_rate.len();
    if !spec_rate
        .iter()
        .zip(owner_rate)
        .any(|(&s, &o)| s != 0.0 || o != 0.0)
    {
        return Some(vec![LOAD_BASE; n]);
    }
    let rates: Vec<f64> = spec_rate
        .iter()
        .zip(owner_rate)
        .map(|(&s, &o)| if s != 0.0 { s } else { o })
        .collect();
    if !rates.iter().any(|&r| r != 0.0) {
        return Some(vec![LOAD_BASE; n]);
    }
    let total = fsum(&rates)?;
    if total <= 0.0 || !total.is_finite() {
        return Some(vec![LOAD_BASE; n]);
    }
    let scale = (LOAD_BASE as f64 * n as f64) / total;
    // LOAD_BASE * n is an exact integer in a double for any realistic n.
    Some(
        rates
            .iter()
            .map(|&r| LOAD_BASE + (r * scale).round_ties_even() as i64)
            .collect(),
    )
}

/// Member limits and classes, as ``_capacities`` derives them.
pub struct Limits {
    pub cap: Vec<i64>,
    pub budget: Vec<i128>,
    pub weight: Vec<f64>,
    pub mcls: Vec<usize>,
    /// Per class, per topic: clamped cost, or -1 when not eligible/subscribed.
    pub ccost: Vec<Vec<i128>>,
}

pub struct State {
    pub cap: Vec<i64>,
    pub budget: Vec<i128>,
    pub weight: Vec<f64>,
    pub mcls: Vec<usize>,
    pub ccost: Vec<Vec<i128>>,
    pub tgroup: Vec<i64>,
    pub gmembers: Vec<Vec<usize>>,
    /// Per group, per class: cost (-1 when the class is not in the group).
    pub gcost: Vec<Vec<i128>>,
    pub mgroups: Vec<Vec<usize>>,
    pub ptopic: Vec<u32>,
    pub unit: Vec<i64>,
    pub ubar: i64,
    pub uniform: bool,
    pub target: Vec<i64>,
    pub count: Vec<i64>,
    pub used: Vec<i128>,
    pub load: Vec<i64>,
    pub ver: Vec<i64>,
    /// The mutant switched on for this call (``mutants`` builds only).
    #[cfg(feature = "mutants")]
    pub mutant: Option<&'static str>,
}

/// Largest dense table (classes x topics or groups x classes) the native path builds.
pub const MAX_TABLE: usize = 20_000_000;

pub fn capacities(lim: Limits, n_topics: usize, ptopic: Vec<u32>, unit: Vec<i64>) -> Option<State> {
    let n = lim.cap.len();
    let n_cls = lim.ccost.len();
    let mut cmembers: Vec<Vec<usize>> = vec![Vec::new(); n_cls];
    for (i, &c) in lim.mcls.iter().enumerate() {
        cmembers[c].push(i);
    }
    let mut groups: HashMap<Vec<(usize, i128)>, usize> = HashMap::new();
    let mut tgroup: Vec<i64> = Vec::with_capacity(n_topics);
    let mut gmembers: Vec<Vec<usize>> = Vec::new();
    let mut gcost: Vec<Vec<i128>> = Vec::new();
    let mut cgroups: Vec<Vec<usize>> = vec![Vec::new(); n_cls];
    for t in 0..n_topics {
        let key2: Vec<(usize, i128)> = (0..n_cls)
            .filter(|&c| lim.ccost[c][t] >= 0)
            .map(|c| (c, lim.ccost[c][t]))
            .collect();
        if key2.is_empty() {
            tgroup.push(-1);
            continue;
        }
        let g = match groups.get(&key2) {
            Some(&g) => g,
            None => {
                let g = gmembers.len();
                if (g + 1).saturating_mul(n_cls) > MAX_TABLE {
                    return None;
                }
                let mut ms: Vec<usize> = key2
                    .iter()
                    .flat_map(|&(c, _)| cmembers[c].iter().copied())
                    .collect();
                ms.sort_unstable();
                gmembers.push(ms);
                let mut row = vec![-1i128; n_cls];
                for &(c, cost) in &key2 {
                    row[c] = cost;
                    cgroups[c].push(g);
                }
                gcost.push(row);
                groups.insert(key2, g);
                g
            }
        };
        tgroup.push(g as i64);
    }
    let p = unit.len();
    let uniform = p == 0 || unit.iter().all(|&u| u == unit[0]);
    let ubar = if p > 0 {
        if uniform {
            unit[0]
        } else {
            (unit.iter().map(|&u| u as i128).sum::<i128>() / p as i128) as i64
        }
    } else {
        LOAD_BASE
    };
    let mgroups = lim.mcls.iter().map(|&c| cgroups[c].clone()).collect();
    Some(State {
        cap: lim.cap,
        budget: lim.budget,
        weight: lim.weight,
        mcls: lim.mcls,
        ccost: lim.ccost,
        tgroup,
        gmembers,
        gcost,
        mgroups,
        ptopic,
        unit,
        ubar,
        uniform,
        target: vec![-1; p],
        count: vec![0; n],
        used: vec![0; n],
        load: vec![0; n],
        ver: vec![0; n],
        #[cfg(feature = "mutants")]
        mutant: None,
    })
}

impl State {
    #[inline]
    fn cost(&self, i: usize, j: usize) -> i128 {
        self.ccost[self.mcls[i]][self.ptopic[j] as usize]
    }

    #[inline]
    fn gc(&self, g: usize, i: usize) -> i128 {
        self.gcost[g][self.mcls[i]]
    }

    fn room(&self, i: usize, g: usize) -> i64 {
        let by_count = self.cap[i] - self.count[i];
        let c = self.gc(g, i);
        if c == 0 {
            return if self.budget[i] >= 0 { by_count } else { 0 };
        }
        let by_bytes = (self.budget[i] - self.used[i]).div_euclid(c);
        let m = (by_count as i128).min(by_bytes);
        m.max(0) as i64
    }

    #[inline]
    fn fits(&self, i: usize, g: usize) -> bool {
        self.count[i] < self.cap[i] && self.used[i] + self.gc(g, i) <= self.budget[i]
    }

    fn add(&mut self, i: usize, j: usize) {
        self.target[j] = i as i64;
        self.count[i] += 1;
        self.used[i] += self.cost(i, j);
        self.load[i] += self.unit[j];
        self.ver[i] += 1;
    }

    fn add_many(&mut self, i: usize, js: &[usize], cost: i128) {
        for &j in js {
            self.target[j] = i as i64;
        }
        self.count[i] += js.len() as i64;
        self.used[i] += cost;
        if self.uniform {
            self.load[i] += js.len() as i64 * self.unit[js[0]];
        } else {
            self.load[i] += js.iter().map(|&j| self.unit[j]).sum::<i64>();
        }
        self.ver[i] += 1;
    }

    /// Member ``i`` takes the free partition ``j`` (load unit ``unit``, costing it ``c``):
    /// whether it has room for another at that cost.
    #[inline]
    fn take(&mut self, i: usize, j: usize, unit: i64, c: i128) -> bool {
        self.target[j] = i as i64;
        self.count[i] += 1;
        self.used[i] += c;
        self.load[i] += unit;
        self.ver[i] += 1;
        self.count[i] < self.cap[i] && self.used[i] + c <= self.budget[i]
    }

    fn remove(&mut self, i: usize, j: usize) {
        self.target[j] = -1;
        self.count[i] -= 1;
        self.used[i] -= self.cost(i, j);
        self.load[i] -= self.unit[j];
        self.ver[i] += 1;
    }

    #[inline]
    fn key(&self, i: usize) -> f64 {
        (self.load[i] + self.ubar) as f64 / self.weight[i]
    }
}

// ----------------------------------------------------------------------------- receivers

pub struct Receivers {
    /// Per topic group (indexed by group: there are few, and the look-up is made once per
    /// partition placed), its heap of receivers and the version each member was pushed at.
    heaps: Vec<Option<(MinHeap<KeyEntry>, Vec<i64>)>>,
    /// Per topic group, whether all its members have one weight (see :meth:`fill_alike`).
    alike: Vec<Option<bool>>,
}

impl Receivers {
    pub fn new() -> Self {
        Receivers {
            heaps: Vec::new(),
            alike: Vec::new(),
        }
    }

    fn ensure(&mut self, st: &State, g: usize) -> &mut (MinHeap<KeyEntry>, Vec<i64>) {
        if self.heaps.len() <= g {
            self.heaps
                .resize_with(st.gmembers.len().max(g + 1), || None);
        }
        self.heaps[g].get_or_insert_with(|| {
            let mut pushed = vec![-1i64; st.cap.len()];
            let mut items = Vec::new();
            for &i in &st.gmembers[g] {
                if st.fits(i, g) {
                    items.push(Reverse(KeyEntry::new(st.key(i), i, st.ver[i])));
                    pushed[i] = st.ver[i];
                }
            }
            (BinaryHeap::from(items), pushed)
        })
    }

    pub fn best(&mut self, st: &State, g: usize, exclude: i64) -> i64 {
        let (heap, pushed) = self.ensure(st, g);
        let mut held: Option<Reverse<KeyEntry>> = None;
        let mut found = -1i64;
        while let Some(&Reverse(top)) = heap.peek() {
            let (i, v) = (top.member(), top.version());
            if v != st.ver[i] {
                heap.pop();
                if pushed[i] != st.ver[i] && st.fits(i, g) {
                    heap.push(Reverse(KeyEntry::new(st.key(i), i, st.ver[i])));
                    pushed[i] = st.ver[i];
                }
                continue;
            }
            if !st.fits(i, g) {
                heap.pop();
                pushed[i] = -1;
                continue;
            }
            if i as i64 == exclude {
                held = heap.pop();
                continue;
            }
            found = i as i64;
            break;
        }
        if let Some(h) = held {
            heap.push(h);
        }
        found
    }

    /// ``_Receivers.fill``: returns the index in ``run`` from which nothing was placed.
    /// ``units`` holds the load unit of each partition in ``run`` (or is empty: then
    /// ``st.unit`` has it).
    pub fn fill(&mut self, st: &mut State, g: usize, run: &[usize], units: &[i64]) -> usize {
        if let Some(done) = self.fill_alike(st, g, run, units) {
            return done;
        }
        let (heap, pushed) = self.ensure(st, g);
        for (pos, &j) in run.iter().enumerate() {
            let i;
            loop {
                let top = match heap.peek() {
                    Some(&Reverse(e)) => e,
                    None => return pos,
                };
                let (ii, v) = (top.member(), top.version());
                let c = st.gcost[g][st.mcls[ii]];
                let fits = st.count[ii] < st.cap[ii] && st.used[ii] + c <= st.budget[ii];
                if v != st.ver[ii] {
                    heap.pop();
                    if pushed[ii] != st.ver[ii] && fits {
                        heap.push(Reverse(KeyEntry::new(st.key(ii), ii, st.ver[ii])));
                        pushed[ii] = st.ver[ii];
                    }
                } else if !fits {
                    heap.pop();
                    pushed[ii] = -1;
                } else {
                    i = ii;
                    break;
                }
            }
            let c = st.gcost[g][st.mcls[i]];
            let room = st.take(i, j, unit_of(st, run, units, pos), c);
            // heapq.heapreplace: the top entry becomes the taker's new one. As a pop and a
            // push (the same heap order: entries are totally ordered): the taker's key grew,
            // so its entry sinks far, which a pop (to the bottom, then up) does in about half
            // the comparisons of a sift down from the top.
            heap.pop();
            if room {
                heap.push(Reverse(KeyEntry::new(st.key(i), i, st.ver[i])));
                pushed[i] = st.ver[i];
            } else {
                pushed[i] = -1;
            }
        }
        run.len()
    }

    /// :meth:`fill` when every member of group ``g`` has the same weight: then a member's
    /// key ``(load + ubar) / weight`` orders as its integer ``load + ubar`` does (below
    /// 2^51 the division of two different integers by one weight never rounds them to one
    /// float), so the receivers are integers, ``(load + ubar) << bits | k`` for the group's
    /// ``k``-th member (members are in ascending order: ties go to the lower one, as in the
    /// heap), in a tournament tree built here from the state: exact and current, and only
    /// the taker's entry changes. The lazy heap of :meth:`ensure`, if built, stays valid:
    /// loads only grow while free partitions are placed, so its stale entries surface early
    /// and are refreshed. None (nothing done) for any other group, or loads too large.
    fn fill_alike(
        &mut self,
        st: &mut State,
        g: usize,
        run: &[usize],
        units: &[i64],
    ) -> Option<usize> {
        if self.alike.len() <= g {
            self.alike.resize(st.gmembers.len().max(g + 1), None);
        }
        let alike = *self.alike[g].get_or_insert_with(|| {
            let ms = &st.gmembers[g];
            let w = ms.first().map_or(1.0, |&i| st.weight[i]);
            // Far from the float range's ends: no key overflows or underflows.
            (1e-250..1e250).contains(&w)
                && ms.iter().all(|&i| st.weight[i].to_bits() == w.to_bits())
        });
        if !alike {
            return None;
        }
        let members = std::mem::take(&mut st.gmembers[g]);
        let done = Self::fill_tournament(st, g, &members, run, units);
        st.gmembers[g] = members;
        done
    }

    /// The placing loop of :meth:`fill_alike`, with the group's members taken out of
    /// ``st`` (None: loads or units this packing cannot hold; nothing was placed then).
    fn fill_tournament(
        st: &mut State,
        g: usize,
        members: &[usize],
        run: &[usize],
        units: &[i64],
    ) -> Option<usize> {
        let leaves = members.len().next_power_of_two();
        let bits = leaves.trailing_zeros().max(1);
        let limit: i128 = 1i128 << 51.min(64 - bits);
        let (mut added, mut lightest) = (0i128, 0i64);
        for pos in 0..run.len() {
            let unit = unit_of(st, run, units, pos);
            added += unit as i128;
            lightest = lightest.min(unit);
        }
        if lightest < 0 {
            return None; // loads must only grow (see fill_alike)
        }
        const NOBODY: u64 = u64::MAX;
        // tree[leaves + k]: member k's entry; tree[p]: the least of tree[2p] and tree[2p + 1].
        let mut tree = vec![NOBODY; 2 * leaves];
        for (k, &i) in members.iter().enumerate() {
            let base = (st.load[i] + st.ubar) as i128;
            // Below limit - 1: no entry reaches NOBODY.
            if base < 0 || base + added + 1 >= limit {
                return None;
            }
            if st.fits(i, g) {
                tree[leaves + k] = (base as u64) << bits | k as u64;
            }
        }
        for p in (1..leaves).rev() {
            tree[p] = tree[2 * p].min(tree[2 * p + 1]);
        }
        let row = st.gcost[g].clone();
        for (pos, &j) in run.iter().enumerate() {
            // Every entry in the tree is of a member that fits: checked when it was made.
            let top = tree[1];
            if top == NOBODY {
                return Some(pos);
            }
            let k = (top & ((1 << bits) - 1)) as usize;
            let i = members[k];
            let unit = unit_of(st, run, units, pos);
            let mut entry = if st.take(i, j, unit, row[st.mcls[i]]) {
                top + ((unit as u64) << bits)
            } else {
                NOBODY
            };
            // Replay the taker's way up: the siblings' winners do not depend on each other,
            // so the loads run ahead of the chain of minimums.
            let mut at = leaves + k;
            tree[at] = entry;
            while at > 1 {
                entry = entry.min(tree[at ^ 1]);
                at >>= 1;
                tree[at] = entry;
            }
        }
        Some(run.len())
    }

    fn rose(&mut self, st: &State, i: usize, g: usize) {
        if let Some(Some((heap, pushed))) = self.heaps.get_mut(g) {
            if st.fits(i, g) {
                heap.push(Reverse(KeyEntry::new(st.key(i), i, st.ver[i])));
                pushed[i] = st.ver[i];
            }
        }
    }

    fn fell(&mut self, st: &State, i: usize) {
        for &g in &st.mgroups[i] {
            if let Some(Some((heap, pushed))) = self.heaps.get_mut(g) {
                if st.fits(i, g) {
                    heap.push(Reverse(KeyEntry::new(st.key(i), i, st.ver[i])));
                    pushed[i] = st.ver[i];
                }
            }
        }
    }
}

/// The load unit of ``run[pos]``: ``units[pos]``, or ``st.unit`` when ``units`` is empty.
#[inline]
fn unit_of(st: &State, run: &[usize], units: &[i64], pos: usize) -> i64 {
    if units.is_empty() {
        st.unit[run[pos]]
    } else {
        units[pos]
    }
}

// ----------------------------------------------------------------------------- keep owned

/// ``_keep_owned``; ``mine`` per member ascending. Returns how many were shed.
pub fn keep_owned(st: &mut State, mine: &[Vec<usize>]) -> usize {
    #[cfg(feature = "mutants")]
    {
        if st.mutant == Some("forget_ownership") {
            return 0;
        }
    }
    let mut shed = 0usize;
    for (i, js) in mine.iter().enumerate() {
        if js.is_empty() {
            continue;
        }
        let c = st.mcls[i];
        let mut total: i128 = 0;
        for &j in js {
            let cost = st.ccost[c][st.ptopic[j] as usize];
            if cost < 0 {
                total = -1;
                break;
            }
            total += cost;
        }
        if total >= 0 && total <= st.budget[i] && (js.len() as i64) <= st.cap[i] {
            st.add_many(i, js, total);
            continue;
        }
        let mut order = js.clone();
        order.sort_by(|&a, &b| st.unit[b].cmp(&st.unit[a]).then(a.cmp(&b)));
        for j in order {
            let cost = st.ccost[c][st.ptopic[j] as usize];
            if cost >= 0 && st.count[i] < st.cap[i] && st.used[i] + cost <= st.budget[i] {
                st.add(i, j);
            } else {
                shed += 1;
            }
        }
    }
    shed
}

// ----------------------------------------------------------------------------- place free

/// The free partitions in placement order, cut into runs of one load unit and one topic
/// group: run ``k`` is ``order[ends[k - 1]..ends[k]]``, in group ``groups[k]`` (one flat
/// array: with ingress rates nearly every run holds one partition, and a vector per run cost
/// as much as placing it). ``units`` holds each placed partition's load unit, in ``order``
/// (empty when every unit is the same): the receivers read it in sequence, where looking
/// ``unit`` up by partition missed the cache on nearly every one.
pub struct Runs {
    pub order: Vec<usize>,
    pub units: Vec<i64>,
    pub ends: Vec<usize>,
    pub groups: Vec<i64>,
}

impl Runs {
    fn unit(&self, st: &State, pos: usize) -> i64 {
        if self.units.is_empty() {
            st.unit[self.order[pos]]
        } else {
            self.units[pos]
        }
    }
}

fn runs(st: &State, free: &[usize]) -> Runs {
    #[cfg(feature = "mutants")]
    {
        if st.mutant == Some("coldest_first") {
            let mut order = free.to_vec();
            order.sort_by_key(|&j| (st.unit[j], j));
            let ends = (1..=order.len()).collect();
            let groups = order
                .iter()
                .map(|&j| st.tgroup[st.ptopic[j] as usize])
                .collect();
            return Runs {
                order,
                units: Vec::new(),
                ends,
                groups,
            };
        }
    }
    let scarcity = |g: i64| -> usize {
        if g >= 0 {
            st.gmembers[g as usize].len()
        } else {
            0
        }
    };
    if st.uniform {
        // One run per topic group (the topics no member takes in bucket 0), the scarcest
        // group first: a stable counting sort of the free partitions by bucket (a map of
        // growing vectors cost a third of a fresh plan).
        let bucket_of: Vec<usize> = st.tgroup.iter().map(|&g| (g + 1) as usize).collect();
        let mut count = vec![0usize; st.gmembers.len() + 1];
        for &j in free {
            count[bucket_of[st.ptopic[j] as usize]] += 1;
        }
        let mut gs: Vec<i64> = (-1..st.gmembers.len() as i64)
            .filter(|&g| count[(g + 1) as usize] > 0)
            .collect();
        gs.sort_by_key(|&g| (scarcity(g), g));
        let mut at = vec![0usize; count.len()];
        let mut ends = Vec::with_capacity(gs.len());
        let mut end = 0usize;
        for &g in &gs {
            at[(g + 1) as usize] = end;
            end += count[(g + 1) as usize];
            ends.push(end);
        }
        let order = if gs.len() == 1 {
            free.to_vec() // one group: the free partitions as they are
        } else {
            let mut order = vec![0usize; free.len()];
            for &j in free {
                let b = bucket_of[st.ptopic[j] as usize];
                order[at[b]] = j;
                at[b] += 1;
            }
            order
        };
        return Runs {
            order,
            units: Vec::new(),
            ends,
            groups: gs,
        };
    }
    if let Some(runs) = runs_of_one_group(st, free) {
        return runs;
    }
    let rank: Vec<usize> = st.tgroup.iter().map(|&g| scarcity(g)).collect();
    // Heaviest first, then the scarcest group, then the index: (-unit, rank, j) as one
    // 128-bit integer, -unit in the high word (its sign bit flipped: the order of an i64 as
    // an unsigned), then rank (a member count) and j (run_plan takes fewer than 2^32
    // partitions) in the low word: integers sort faster than the tuple.
    let mut keyed: Vec<u128> = free
        .iter()
        .map(|&j| {
            let t = st.ptopic[j] as usize;
            let heaviest = (st.unit[j].wrapping_neg() as u64) ^ (1 << 63);
            (heaviest as u128) << 64 | (((rank[t] as u64) << 32) | j as u64) as u128
        })
        .collect();
    keyed.sort_unstable();
    let mut runs = Runs::with_capacity(keyed.len());
    for key in keyed {
        let j = (key as u64 & 0xffff_ffff) as usize;
        let unit = (((key >> 64) as u64) ^ (1 << 63)).wrapping_neg() as i64;
        let g = st.tgroup[st.ptopic[j] as usize];
        runs.push(j, unit, g);
    }
    runs.close();
    runs
}

impl Runs {
    /// No runs yet, with room for ``n`` partitions.
    fn with_capacity(n: usize) -> Self {
        Runs {
            order: Vec::with_capacity(n),
            units: Vec::with_capacity(n),
            ends: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// Appends partition ``j`` (its unit and group given), starting a run when either
    /// differs from the last one's.
    #[inline]
    fn push(&mut self, j: usize, unit: i64, g: i64) {
        if let (Some(&last_unit), Some(&last_g)) = (self.units.last(), self.groups.last()) {
            if last_unit != unit || last_g != g {
                self.ends.push(self.order.len());
                self.groups.push(g);
            }
        } else {
            self.groups.push(g);
        }
        self.order.push(j);
        self.units.push(unit);
    }

    fn close(&mut self) {
        if !self.order.is_empty() {
            self.ends.push(self.order.len());
        }
    }
}

/// :func:`runs` when every topic is in one group (every member of a deployment subscribes
/// alike), every unit fits in 32 bits and ``free`` ascends: then the placement order is
/// the heaviest first, ties by index, which a stable radix sort by unit alone gives (the
/// partitions come in index order). None otherwise.
fn runs_of_one_group(st: &State, free: &[usize]) -> Option<Runs> {
    let g = *st.tgroup.first()?;
    if g < 0 || st.tgroup.iter().any(|&t| t != g) || free.len() > u32::MAX as usize {
        return None;
    }
    let mut heaviest = 0i64;
    let mut ascending = true;
    let mut prev = None;
    for &j in free {
        let u = st.unit[j];
        if u < 0 || j > u32::MAX as usize {
            return None;
        }
        heaviest = heaviest.max(u);
        ascending &= prev.is_none_or(|p| p < j);
        prev = Some(j);
    }
    if !ascending || heaviest > u32::MAX as i64 {
        return None;
    }
    // (heaviest - unit) in the high word, the index in the low one: sorted by the high
    // word alone (stable), the order is by (-unit, j).
    let keys: Vec<u64> = free
        .iter()
        .map(|&j| ((heaviest - st.unit[j]) as u64) << 32 | j as u64)
        .collect();
    let keys = radix_sort_high_words(keys, 64 - (heaviest as u64).leading_zeros());
    let mut runs = Runs::with_capacity(keys.len());
    for key in keys {
        runs.push(
            (key & 0xffff_ffff) as usize,
            heaviest - (key >> 32) as i64,
            g,
        );
    }
    runs.close();
    Some(runs)
}

/// Sorts ``keys`` stably by their high 32-bit words, of which only the low ``bits`` are
/// ever set: a least-significant-digit radix sort, 11 bits at a time.
fn radix_sort_high_words(mut keys: Vec<u64>, bits: u32) -> Vec<u64> {
    const DIGIT: u32 = 11;
    let mut spare = vec![0u64; keys.len()];
    let mut shift = 0;
    while shift < bits {
        let digit = |k: u64| ((k >> (32 + shift)) & ((1 << DIGIT) - 1)) as usize;
        let mut at = [0usize; 1 << DIGIT];
        for &k in &keys {
            at[digit(k)] += 1;
        }
        let mut sum = 0;
        for slot in at.iter_mut() {
            (*slot, sum) = (sum, sum + *slot);
        }
        for &k in &keys {
            let d = digit(k);
            spare[at[d]] = k;
            at[d] += 1;
        }
        std::mem::swap(&mut keys, &mut spare);
        shift += DIGIT;
    }
    keys
}

fn water_fill(st: &mut State, g: usize, run: &[usize], u: i64) -> Option<usize> {
    #[cfg(feature = "mutants")]
    {
        if st.mutant == Some("first_fit_without_balance") {
            let mut pos = 0usize;
            for i in st.gmembers[g].clone() {
                let k = (st.room(i, g).max(0) as usize).min(run.len() - pos);
                if k > 0 {
                    let cost = k as i128 * st.gc(g, i);
                    st.add_many(i, &run[pos..pos + k], cost);
                    pos += k;
                }
            }
            return Some(pos);
        }
    }
    let ubar = st.ubar;
    let rooms: Vec<(usize, i64)> = st.gmembers[g]
        .iter()
        .filter_map(|&i| {
            let r = st.room(i, g);
            if r > 0 {
                Some((i, r))
            } else {
                None
            }
        })
        .collect();
    let want = run.len() as i64;
    let mut take: Vec<i64>;
    let total_room: i128 = rooms.iter().map(|&(_, r)| r as i128).sum();
    if total_room <= want as i128 {
        take = rooms.iter().map(|&(_, r)| r).collect();
    } else {
        let first: Vec<f64> = rooms
            .iter()
            .map(|&(i, _)| (st.load[i] + ubar) as f64 / st.weight[i])
            .collect();
        let step: Vec<f64> = rooms
            .iter()
            .map(|&(i, _)| u as f64 / st.weight[i])
            .collect();
        let caps: Vec<i64> = rooms.iter().map(|&(_, r)| r).collect();
        if step.iter().any(|&d| !(d > 0.0 && d.is_finite())) {
            return None; // Python would divide by zero here: leave it to the Python path
        }
        /// How many of its ``r`` free slots a member at key ``a`` (``d`` per partition) takes
        /// below ``level``: min(r, max(0, floor + 1)), with Python's exact integers.
        fn below(level: f64, a: f64, d: f64, r: i64) -> i64 {
            let f = ((level - a) / d).floor();
            if f + 1.0 <= 0.0 {
                0
            } else if f + 1.0 >= r as f64 {
                r
            } else {
                (f as i64 + 1).min(r)
            }
        }
        let members = || first.iter().zip(&step).zip(&caps);
        let taken = |level: f64| -> Vec<i64> {
            members()
                .map(|((&a, &d), &r)| below(level, a, d, r))
                .collect()
        };
        let sum = |v: &[i64]| -> i64 { v.iter().sum() };
        // sum(&taken(level)) without building the vector: the bisection asks it ~50 times.
        let taken_sum =
            |level: f64| -> i64 { members().map(|((&a, &d), &r)| below(level, a, d, r)).sum() };
        let mut lo = first.iter().copied().fold(f64::INFINITY, f64::min) - 1.0;
        let mut hi = first
            .iter()
            .zip(&step)
            .zip(&caps)
            .map(|((&a, &d), &r)| a + d * r as f64)
            .fold(f64::NEG_INFINITY, |m, x| if x > m { x } else { m });
        let mut inv = 0.0f64;
        for &d in &step {
            inv += 1.0 / d;
        }
        let mut s = 0.0f64;
        for (&a, &d) in first.iter().zip(&step) {
            s += a / d;
        }
        let guess = (want as f64 + s) / inv;
        let near = 2.0
            * step
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, |m, x| if x > m { x } else { m });
        if taken_sum(guess - near) <= want && want < taken_sum(guess + near) {
            lo = guess - near;
            hi = guess + near;
        }
        let finest = step
            .iter()
            .copied()
            .fold(f64::INFINITY, |m, x| if x < m { x } else { m });
        while hi - lo > finest {
            let mid = (lo + hi) / 2.0;
            if mid == lo || mid == hi {
                break;
            }
            if taken_sum(mid) <= want {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let counts = taken(lo);
        take = counts.clone();
        let mut heap: MinHeap<(KeyF, usize, usize)> = BinaryHeap::new();
        for (k, (&(i, r), &c)) in rooms.iter().zip(&counts).enumerate() {
            if c < r {
                heap.push(Reverse((
                    KeyF((st.load[i] + c * u + ubar) as f64 / st.weight[i]),
                    i,
                    k,
                )));
            }
        }
        let extra = want - sum(&counts);
        for _ in 0..extra {
            let Reverse((_, i, k)) = heap.pop().unwrap();
            take[k] += 1;
            if take[k] < rooms[k].1 {
                heap.push(Reverse((
                    KeyF((st.load[i] + take[k] * u + ubar) as f64 / st.weight[i]),
                    i,
                    k,
                )));
            }
        }
    }
    let mut pos = 0usize;
    for (k, &(i, _)) in rooms.iter().enumerate() {
        let n = take[k] as usize;
        if n > 0 {
            let cost = n as i128 * st.gc(g, i);
            st.add_many(i, &run[pos..pos + n], cost);
            pos += n;
        }
    }
    Some(pos)
}

/// A float key with a total order (never NaN here), for tuples in heaps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyF(pub f64);
impl Eq for KeyF {}
impl PartialOrd for KeyF {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for KeyF {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal)
    }
}

pub fn place_free(st: &mut State, free: &[usize]) -> Option<Vec<usize>> {
    let mut recv = Receivers::new();
    let mut unplaced = Vec::new();
    let runs = runs(st, free);
    let (order, ends) = (&runs.order, &runs.ends);
    let mut start = 0usize;
    let mut k = 0usize;
    while k < ends.len() {
        let run = &order[start..ends[k]];
        let g = runs.groups[k];
        if g < 0 {
            unplaced.extend_from_slice(run);
            start = ends[k];
            k += 1;
            continue;
        }
        let g = g as usize;
        let members = st.gmembers[g].len();
        if run.len() >= members {
            let done = water_fill(st, g, run, runs.unit(st, start))?;
            unplaced.extend_from_slice(&run[done..]);
            start = ends[k];
            k += 1;
            continue;
        }
        // The short runs that follow in the same group go to the receivers in one call:
        // they take the partitions one by one in this order either way (with ingress rates
        // nearly every run is one partition, and a call per partition cost a tenth of it).
        let mut last = k + 1;
        while last < ends.len()
            && runs.groups[last] == g as i64
            && ends[last] - ends[last - 1] < members
        {
            last += 1;
        }
        let end = ends[last - 1];
        let units = if runs.units.is_empty() {
            &[][..]
        } else {
            &runs.units[start..end]
        };
        let done = recv.fill(st, g, &order[start..end], units);
        unplaced.extend_from_slice(&order[start + done..end]);
        start = end;
        k = last;
    }
    Some(unplaced)
}

// ----------------------------------------------------------------------------- augment

type Hold = Vec<BTreeMap<u32, Vec<usize>>>;

pub fn augment(st: &mut State, unplaced: &[usize]) -> Vec<usize> {
    #[cfg(feature = "mutants")]
    {
        if st.mutant == Some("skip_augmenting_paths") {
            return unplaced.to_vec();
        }
    }
    if unplaced.is_empty() {
        return Vec::new();
    }
    let mut hold: Hold = vec![BTreeMap::new(); st.cap.len()];
    for (j, &i) in st.target.iter().enumerate() {
        if i >= 0 {
            hold[i as usize].entry(st.ptopic[j]).or_default().push(j);
        }
    }
    let mut failed: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut left = Vec::new();
    for &j in unplaced {
        let t = st.ptopic[j];
        if st.tgroup[t as usize] < 0 || failed.contains(&t) {
            left.push(j);
            continue;
        }
        match find_chain(st, &hold, j) {
            None => {
                failed.insert(t);
                left.push(j);
            }
            Some(chain) => {
                failed.clear();
                for (giver, taker, q) in chain {
                    if giver >= 0 {
                        let gv = giver as usize;
                        st.remove(gv, q);
                        let v = hold[gv].get_mut(&st.ptopic[q]).unwrap();
                        if let Some(p) = v.iter().position(|&x| x == q) {
                            v.remove(p);
                        }
                    }
                    st.add(taker, q);
                    hold[taker].entry(st.ptopic[q]).or_default().push(q);
                }
            }
        }
    }
    left
}

fn find_chain(st: &State, hold: &Hold, j: usize) -> Option<Vec<(i64, usize, usize)>> {
    let g0 = st.tgroup[st.ptopic[j] as usize] as usize;
    let mut incoming: HashMap<usize, usize> = HashMap::new();
    let mut parent: HashMap<usize, i64> = HashMap::new();
    let mut queue: VecDeque<usize> = VecDeque::new();
    let mut expanded: std::collections::HashSet<usize> = std::collections::HashSet::new();
    expanded.insert(g0);
    let mut end: i64 = -1;
    for &m in &st.gmembers[g0] {
        incoming.insert(m, j);
        parent.insert(m, -1);
        if st.fits(m, g0) {
            end = m as i64;
            break;
        }
        queue.push_back(m);
    }
    while end < 0 {
        let m = match queue.pop_front() {
            Some(m) => m,
            None => break,
        };
        let cin = st.cost(m, incoming[&m]);
        for (&t2, held) in hold[m].iter() {
            let g2 = st.tgroup[t2 as usize];
            if held.is_empty() || g2 < 0 || expanded.contains(&(g2 as usize)) {
                continue;
            }
            let g2 = g2 as usize;
            let q = *held.last().unwrap();
            if st.used[m] - st.cost(m, q) + cin > st.budget[m] {
                continue;
            }
            expanded.insert(g2);
            for &m2 in &st.gmembers[g2] {
                if incoming.contains_key(&m2) {
                    continue;
                }
                incoming.insert(m2, q);
                parent.insert(m2, m as i64);
                if st.fits(m2, g2) {
                    end = m2 as i64;
                    break;
                }
                queue.push_back(m2);
            }
            if end >= 0 {
                break;
            }
        }
    }
    if end < 0 {
        return None;
    }
    let mut chain = Vec::new();
    let mut taker = end;
    while taker >= 0 {
        let t = taker as usize;
        let giver = parent[&t];
        chain.push((giver, t, incoming[&t]));
        taker = giver;
    }
    Some(chain)
}

// ----------------------------------------------------------------------------- balance

#[inline]
fn improves(st: &State, a: usize, b: i64, u: i64) -> bool {
    if b < 0 {
        return false;
    }
    let b = b as usize;
    ((st.load[b] + u) as f64) * st.weight[a] < (st.load[a] as f64) * st.weight[b]
}

fn already_balanced(st: &State, recv: &mut Receivers) -> bool {
    let u = st.unit[0];
    for a in 0..st.count.len() {
        if st.count[a] != 0 {
            let gs: Vec<usize> = if st.gmembers.len() > 1 {
                st.mgroups[a].clone()
            } else {
                vec![0]
            };
            for g in gs {
                let b = recv.best(st, g, a as i64);
                if improves(st, a, b, u) {
                    return false;
                }
            }
        }
    }
    true
}

/// Whether the first pass of :func:`balance` would find no improving move: the same questions
/// it asks of every donor (the lightest fresh partition of each of its groups, its heaviest
/// partition where it keeps any), answered from one pass over the partitions instead of the
/// heaps :struct:`Holdings` builds, which cost most of the step when nothing moves (a fresh
/// group with ingress rates, placed heaviest first, is usually balanced already). False
/// when the per-(member, group) table would be too large: the full pass decides.
fn nothing_to_move(st: &State, owner: &[i64], recv: &mut Receivers) -> bool {
    let n = st.cap.len();
    let ng = st.gmembers.len();
    if n.saturating_mul(ng) > MAX_TABLE {
        return false;
    }
    let mut fresh_min = vec![i64::MAX; n * ng];
    let mut kept_any = vec![false; n * ng];
    let mut heaviest = vec![i64::MIN; n];
    for (j, &i) in st.target.iter().enumerate() {
        if i < 0 {
            continue;
        }
        let a = i as usize;
        let k = a * ng + st.tgroup[st.ptopic[j] as usize] as usize;
        let u = st.unit[j];
        if owner[j] == i {
            kept_any[k] = true;
        } else if u < fresh_min[k] {
            fresh_min[k] = u;
        }
        heaviest[a] = heaviest[a].max(u);
    }
    for (a, &heavy) in heaviest.iter().enumerate() {
        if st.count[a] == 0 {
            continue;
        }
        for g in 0..ng {
            let k = a * ng + g;
            let fresh = fresh_min[k] != i64::MAX;
            if !fresh && !kept_any[k] {
                continue;
            }
            let b = recv.best(st, g, a as i64);
            if fresh && improves(st, a, b, fresh_min[k]) {
                return false;
            }
            if kept_any[k] && improves(st, a, b, heavy) {
                return false;
            }
        }
    }
    true
}

/// Per group, (load unit, partition) entries not yet heapified.
type Unheaped = BTreeMap<usize, Vec<Reverse<(i64, usize)>>>;

struct Holdings {
    fresh: Vec<BTreeMap<usize, MinHeap<(i64, usize)>>>,
    kept: Vec<BTreeMap<usize, MinHeap<(i64, usize)>>>,
    /// Lazy max-heap of (unit, partition) per member: Python's (-unit, j) min-heap.
    heavy: Vec<MinHeap<(i64, usize)>>,
}

impl Holdings {
    fn build(st: &State, owner: &[i64]) -> Holdings {
        let n = st.cap.len();
        let mut fresh: Vec<Unheaped> = vec![BTreeMap::new(); n];
        let mut kept: Vec<Unheaped> = vec![BTreeMap::new(); n];
        let mut heavy: Vec<Vec<Reverse<(i64, usize)>>> = vec![Vec::new(); n];
        for (j, &i) in st.target.iter().enumerate() {
            if i >= 0 {
                let iu = i as usize;
                let g = st.tgroup[st.ptopic[j] as usize] as usize;
                let side = if owner[j] == i { &mut kept } else { &mut fresh };
                side[iu]
                    .entry(g)
                    .or_default()
                    .push(Reverse((st.unit[j], j)));
                heavy[iu].push(Reverse((-st.unit[j], j)));
            }
        }
        let conv = |v: Vec<Unheaped>| {
            v.into_iter()
                .map(|m| {
                    m.into_iter()
                        .map(|(g, h)| (g, BinaryHeap::from(h)))
                        .collect()
                })
                .collect()
        };
        Holdings {
            fresh: conv(fresh),
            kept: conv(kept),
            heavy: heavy.into_iter().map(BinaryHeap::from).collect(),
        }
    }

    fn heaviest(&mut self, st: &State, a: usize) -> i64 {
        let h = &mut self.heavy[a];
        while let Some(&Reverse((_, j))) = h.peek() {
            if st.target[j] != a as i64 {
                h.pop();
            } else {
                break;
            }
        }
        match h.peek() {
            Some(&Reverse((nu, _))) => -nu,
            None => 0,
        }
    }
}

/// ``_balance``: returns the number of moves.
pub fn balance(st: &mut State, owner: &[i64]) -> usize {
    #[cfg(feature = "mutants")]
    {
        if st.mutant == Some("first_fit_without_balance") {
            return 0;
        }
        if st.mutant == Some("rebalance_on_ties") {
            st.mutant = None;
            let moves = balance(st, owner);
            st.mutant = Some("rebalance_on_ties");
            return moves + one_more_move_on_ties(st);
        }
    }
    let mut recv = Receivers::new();
    if st.uniform && (st.unit.is_empty() || already_balanced(st, &mut recv)) {
        return 0;
    }
    if !st.uniform && nothing_to_move(st, owner, &mut recv) {
        return 0;
    }
    let mut hd = Holdings::build(st, owner);
    let n = st.cap.len();
    let mut moves = 0usize;
    let mut progress = true;
    while progress {
        progress = false;
        let mut donors: MinHeap<(KeyF, usize, i64)> = (0..n)
            .filter(|&i| st.count[i] != 0)
            .map(|i| Reverse((KeyF((-st.load[i]) as f64 / st.weight[i]), i, st.ver[i])))
            .collect();
        while let Some(Reverse((_, a, v))) = donors.pop() {
            if v != st.ver[a] {
                continue;
            }
            // _next_move
            let mut found: Option<(bool, usize, i64)> = None; // (from kept, group, receiver)
            let gs: Vec<usize> = {
                let mut gs: Vec<usize> = hd.fresh[a].keys().copied().collect();
                gs.extend(hd.kept[a].keys().copied());
                gs.sort_unstable();
                gs.dedup();
                gs
            };
            for g in gs {
                let fresh_top = hd.fresh[a].get(&g).and_then(|h| h.peek().map(|r| r.0 .0));
                let kept_nonempty = hd.kept[a].get(&g).is_some_and(|h| !h.is_empty());
                if fresh_top.is_none() && !kept_nonempty {
                    continue;
                }
                let b = recv.best(st, g, a as i64);
                if let Some(u) = fresh_top {
                    if improves(st, a, b, u) {
                        found = Some((false, g, b));
                        break;
                    }
                }
                if kept_nonempty {
                    let hv = hd.heaviest(st, a);
                    if improves(st, a, b, hv) {
                        found = Some((true, g, b));
                        break;
                    }
                }
            }
            let (from_kept, g, b) = match found {
                Some(f) => f,
                None => continue,
            };
            let b = b as usize;
            let heap = if from_kept {
                hd.kept[a].get_mut(&g).unwrap()
            } else {
                hd.fresh[a].get_mut(&g).unwrap()
            };
            let Reverse((u, j)) = heap.pop().unwrap();
            st.remove(a, j);
            st.add(b, j);
            // hd.gain
            let side = if owner[j] == b as i64 {
                &mut hd.kept
            } else {
                &mut hd.fresh
            };
            side[b].entry(g).or_default().push(Reverse((u, j)));
            hd.heavy[b].push(Reverse((-u, j)));
            recv.fell(st, a);
            recv.rose(st, b, g);
            donors.push(Reverse((
                KeyF((-st.load[a]) as f64 / st.weight[a]),
                a,
                st.ver[a],
            )));
            donors.push(Reverse((
                KeyF((-st.load[b]) as f64 / st.weight[b]),
                b,
                st.ver[b],
            )));
            progress = true;
            moves += 1;
        }
    }
    moves
}

// ----------------------------------------------------------------------------- relay

/// ``_relay``: member -> partitions (in placement order; the caller sorts).
pub fn relay(
    st: &State,
    relay_bytes: &[i128],
    owner: &[i64],
    conflicts: &BTreeMap<usize, Vec<usize>>,
) -> BTreeMap<usize, Vec<usize>> {
    let n = st.cap.len();
    let cost: Vec<i128> = (0..n)
        .map(|i| {
            let r = relay_bytes[i];
            if r > 0 && st.cap[i] > 0 && st.budget[i] >= 0 {
                r
            } else {
                0
            }
        })
        .collect();
    #[cfg(feature = "mutants")]
    let cost: Vec<i128> = if st.mutant == Some("relay_ignores_budget") {
        cost.iter().map(|&c| i128::from(c != 0)).collect()
    } else {
        cost
    };
    #[cfg(feature = "mutants")]
    let stolen: Vec<i64>;
    #[cfg(feature = "mutants")]
    let owner: &[i64] = if st.mutant == Some("relay_steals_from_owner") {
        stolen = vec![-1; owner.len()];
        &stolen
    } else {
        owner
    };
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    #[cfg(feature = "mutants")]
    {
        if st.mutant == Some("relay_nothing") {
            return out;
        }
    }
    if !cost.iter().any(|&c| c != 0) {
        return out;
    }
    let mut left: Vec<usize> = (0..st.target.len())
        .filter(|&j| st.target[j] < 0 && !conflicts.contains_key(&j))
        .collect();
    if left.is_empty() {
        return out;
    }
    let mut count = vec![0i64; n];
    let mut used = vec![0i128; n];
    let fits = |i: usize, t: usize, count: &[i64], used: &[i128]| -> bool {
        cost[i] > 0
            && st.ccost[st.mcls[i]][t] >= 0
            && st.count[i] + count[i] < st.cap[i]
            && st.used[i] + used[i] + cost[i] <= st.budget[i]
    };
    let mut heaps: HashMap<usize, MinHeap<(i64, usize)>> = HashMap::new();
    left.sort_by(|&a, &b| st.unit[b].cmp(&st.unit[a]).then(a.cmp(&b)));
    for j in left {
        let t = st.ptopic[j] as usize;
        let mut i = owner[j];
        if i < 0 {
            let heap = heaps.entry(t).or_insert_with(|| {
                (0..n)
                    .filter(|&m| fits(m, t, &count, &used))
                    .map(|m| Reverse((0i64, m)))
                    .collect()
            });
            while let Some(&Reverse((c, m))) = heap.peek() {
                if c != count[m] {
                    heap.pop();
                    heap.push(Reverse((count[m], m)));
                } else if !fits(m, t, &count, &used) {
                    heap.pop();
                } else {
                    i = m as i64;
                    break;
                }
            }
        }
        if i < 0 || !fits(i as usize, t, &count, &used) {
            continue;
        }
        let iu = i as usize;
        out.entry(iu).or_default().push(j);
        count[iu] += 1;
        used[iu] += cost[iu];
    }
    #[cfg(feature = "mutants")]
    {
        if st.mutant == Some("relay_forgets_owner") {
            for js in out.values_mut() {
                js.retain(|&j| owner[j] < 0);
            }
            out.retain(|_, js| !js.is_empty());
        }
    }
    out
}

/// Mutant ``rebalance_on_ties`` (KAFKA-15106): after balancing, one more move, made on a
/// tie too: the first partition of the most loaded member to a member loaded no more.
#[cfg(feature = "mutants")]
fn one_more_move_on_ties(st: &mut State) -> usize {
    let mut recv = Receivers::new();
    let mut members: Vec<usize> = (0..st.cap.len()).collect();
    members.sort_by_key(|&i| (-st.load[i], i));
    for a in members {
        let js: Vec<usize> = (0..st.target.len())
            .filter(|&j| st.target[j] == a as i64)
            .collect();
        for j in js {
            let g = st.tgroup[st.ptopic[j] as usize] as usize;
            let b = recv.best(st, g, a as i64);
            if b >= 0 && st.load[b as usize] <= st.load[a] {
                st.remove(a, j);
                st.add(b as usize, j);
                return 1;
            }
        }
    }
    0
}

//! Deliberately broken steps, for the mutation tests only (cargo feature ``mutants``, never
//! in a release build): ``set_mutant(name)`` switches one on for every later :func:`plan`
//! call, ``set_mutant(None)`` switches it off. Each is the twin of the mutant of the same
//! name in ``tests/assignor/test_mutants.py`` and changes the step that one patches, at
//! the same place; ``tests/assignor/test_native_mutants.py`` checks that the property
//! tests catch every one of them on the compiled core.

use crate::core::{relay, State};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every mutant, by the name of its Python twin.
pub const NAMES: &[&str] = &[
    "ignore_max_partitions",
    "ignore_draining",
    "ignore_weights",
    "give_one_partition_twice",
    "drop_withholding",
    "skip_augmenting_paths",
    "coldest_first",
    "forget_ownership",
    "first_fit_without_balance",
    "rebalance_on_ties",
    "relay_ignores_budget",
    "relay_steals_from_owner",
    "relay_before_batch",
    "relay_nothing",
    "relay_forgets_owner",
];

/// 0: none; k + 1: ``NAMES[k]``.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// The mutant switched on (read once per :func:`plan` call).
pub fn active() -> Option<&'static str> {
    match ACTIVE.load(Ordering::SeqCst) {
        0 => None,
        k => Some(NAMES[k - 1]),
    }
}

/// Switch mutant ``name`` on (None: off). Raises ValueError for a name not in ``MUTANTS``.
#[pyfunction]
#[pyo3(signature = (name))]
pub fn set_mutant(name: Option<&str>) -> PyResult<()> {
    let k = match name {
        None => 0,
        Some(name) => match NAMES.iter().position(|&n| n == name) {
            Some(k) => k + 1,
            None => return Err(PyValueError::new_err(format!("no mutant {name:?}"))),
        },
    };
    ACTIVE.store(k, Ordering::SeqCst);
    Ok(())
}

type Relayed = Option<BTreeMap<usize, Vec<usize>>>;

/// ``relay_before_batch``: relay runs before the free partitions are placed, and what it
/// takes is charged to its members while batch placement runs.
pub fn relay_early(
    st: &mut State,
    free: Vec<usize>,
    relay_bytes: &[i128],
    owner: &[i64],
    conflicts: &BTreeMap<usize, Vec<usize>>,
) -> (Vec<usize>, Relayed) {
    if st.mutant != Some("relay_before_batch") {
        return (free, None);
    }
    let early = relay(st, relay_bytes, owner, conflicts);
    for (&i, js) in &early {
        st.count[i] += js.len() as i64;
        st.used[i] += js.len() as i128 * relay_bytes[i];
    }
    let taken: HashSet<usize> = early.values().flatten().copied().collect();
    let free = free.into_iter().filter(|j| !taken.contains(j)).collect();
    (free, Some(early))
}

/// Undoes :func:`relay_early`'s charges once batch placement is done.
pub fn uncharge(st: &mut State, early: &Relayed, relay_bytes: &[i128]) {
    if let Some(early) = early {
        for (&i, js) in early {
            st.count[i] -= js.len() as i64;
            st.used[i] -= js.len() as i128 * relay_bytes[i];
        }
    }
}

/// ``give_one_partition_twice``: the first partition of the first member holding any is
/// given to the first other member too (order and bounds as ``run_plan`` writes them:
/// member ``i`` holds ``order[bounds[i]..bounds[i + 1]]``).
pub fn give_one_partition_twice(order: &mut Vec<i64>, bounds: &mut [i64]) {
    let n = bounds.len() - 1;
    let Some(h) = (0..n).find(|&i| bounds[i + 1] > bounds[i]) else {
        return;
    };
    let other = if h == 0 { 1 } else { 0 };
    if other >= n {
        return;
    }
    let extra = order[bounds[h] as usize];
    order.insert(bounds[other + 1] as usize, extra);
    for b in &mut bounds[other + 1..] {
        *b += 1;
    }
}

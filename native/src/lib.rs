//! ``capgroup._native``: the compiled core of capgroup's assignor.
//!
//! Two functions, both pure: :func:`plan` runs the whole assignor pipeline of
//! ``capgroup.assignor.balance.reference_assign`` on the group's partitions and members, and
//! :func:`encode_assignments` writes every member's ``ConsumerProtocolMemberAssignment``.
//! Both return None for any input they do not handle exactly as the Python code does (odd
//! types, integers beyond 64 bits, ...): the caller then takes the Python path.

use pyo3::buffer::PyBuffer;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::collections::{BTreeMap, HashMap};

mod core;
mod decode;
mod retain;

/// Large blocks are kept for the next plan (see ``retain``).
#[global_allocator]
static ALLOCATOR: retain::Retaining = retain::Retaining;
#[cfg(feature = "mutants")]
mod mutants;
use crate::core::*;

/// Give up on the native path for this input (the caller falls back to Python).
struct Unsupported;

impl From<PyErr> for Unsupported {
    fn from(_: PyErr) -> Self {
        Unsupported
    }
}

type R<T> = Result<T, Unsupported>;

/// Attribute reads on many instances of one class: the class's data descriptors (slots of a
/// frozen dataclass) are looked up once and called directly, which is what the generic
/// ``getattr`` ends up doing for such an attribute, without the per-call MRO lookup.
/// Instances of any other class take the ordinary ``getattr``.
struct Attrs<'py> {
    cls: *mut pyo3::ffi::PyTypeObject,
    names: Vec<Bound<'py, PyString>>,
    descrs: Vec<(Bound<'py, PyAny>, pyo3::ffi::descrgetfunc)>,
}

impl<'py> Attrs<'py> {
    fn new(sample: &Bound<'py, PyAny>, names: &[&Bound<'py, PyString>]) -> Attrs<'py> {
        let names: Vec<Bound<'py, PyString>> = names.iter().map(|n| (*n).clone()).collect();
        let descrs = Self::descriptors(sample, &names).unwrap_or_default();
        let cls = if descrs.len() == names.len() {
            unsafe { pyo3::ffi::Py_TYPE(sample.as_ptr()) }
        } else {
            std::ptr::null_mut()
        };
        Attrs { cls, names, descrs }
    }

    fn descriptors(
        sample: &Bound<'py, PyAny>,
        names: &[Bound<'py, PyString>],
    ) -> Option<Vec<(Bound<'py, PyAny>, pyo3::ffi::descrgetfunc)>> {
        use pyo3::ffi;
        let cls = sample.get_type();
        unsafe {
            let getattro = ffi::PyType_GetSlot(cls.as_type_ptr(), ffi::Py_tp_getattro);
            if getattro != ffi::PyObject_GenericGetAttr as *mut std::os::raw::c_void {
                return None;
            }
        }
        let mro = cls.getattr("__mro__").ok()?;
        let mut out = Vec::new();
        for name in names {
            let mut found = None;
            for klass in mro.try_iter().ok()? {
                let d = klass.ok()?.getattr("__dict__").ok()?;
                if let Ok(descr) = d.get_item(name) {
                    found = Some(descr);
                    break;
                }
            }
            let descr = found?;
            let dt = descr.get_type();
            let (get, set) = unsafe {
                (
                    ffi::PyType_GetSlot(dt.as_type_ptr(), ffi::Py_tp_descr_get),
                    ffi::PyType_GetSlot(dt.as_type_ptr(), ffi::Py_tp_descr_set),
                )
            };
            if get.is_null() || set.is_null() {
                return None; // only data descriptors take precedence over the instance
            }
            let get: ffi::descrgetfunc = unsafe { std::mem::transmute(get) };
            out.push((descr, get));
        }
        Some(out)
    }

    /// Attribute ``k`` of ``obj``: the descriptor's ``__get__`` for instances of the
    /// sampled class, ``getattr`` for anything else.
    #[inline]
    fn get(&self, obj: &Bound<'py, PyAny>, k: usize) -> PyResult<Bound<'py, PyAny>> {
        unsafe {
            if pyo3::ffi::Py_TYPE(obj.as_ptr()) == self.cls {
                let (descr, get) = &self.descrs[k];
                let f = *get;
                let r = f(
                    descr.as_ptr(),
                    obj.as_ptr(),
                    self.cls as *mut pyo3::ffi::PyObject,
                );
                return Bound::from_owned_ptr_or_err(obj.py(), r);
            }
        }
        obj.getattr(&self.names[k])
    }
}

/// Topic names seen so far, interned by first appearance (codes are remapped once sorted).
struct TopicTable {
    index: HashMap<String, u32>,
    names: Vec<String>,
}

impl TopicTable {
    fn code(&mut self, name: &str) -> u32 {
        if let Some(&c) = self.index.get(name) {
            return c;
        }
        let c = self.names.len() as u32;
        self.index.insert(name.to_owned(), c);
        self.names.push(name.to_owned());
        c
    }
}

fn bytes_of<T: Copy>(py: Python<'_>, v: &[T]) -> PyObject {
    let raw =
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) };
    PyBytes::new(py, raw).into_any().unbind()
}

/// The normalized partitions: sorted by (topic, number), duplicates merged.
struct Parts {
    names: Vec<String>,
    ptopic: Vec<u32>,
    number: Vec<i64>,
    rate: Vec<f64>,
    zero: Vec<bool>,
    /// Per topic: first partition index, count, numbered 0..count-1.
    first: Vec<usize>,
    size: Vec<usize>,
    dense: Vec<bool>,
    /// Known to carry no rate at all (a table without a rates column).
    no_rates: bool,
}

fn normalize<'py>(py: Python<'py>, partitions: &Bound<'py, PyAny>) -> R<Parts> {
    let a_topic = intern!(py, "topic");
    let a_part = intern!(py, "partition");
    let a_rate = intern!(py, "rate");
    let mut table = TopicTable {
        index: HashMap::new(),
        names: Vec::new(),
    };
    let n_hint = partitions.len().unwrap_or(0);
    let mut code: Vec<u32> = Vec::with_capacity(n_hint);
    let mut number: Vec<i64> = Vec::with_capacity(n_hint);
    let mut raw: Vec<f64> = Vec::with_capacity(n_hint);
    let mut prev_ptr: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
    let mut prev_code = 0u32;
    let mut keep: Vec<Bound<'py, PyAny>> = Vec::new();
    let mut attrs: Option<Attrs<'py>> = None;
    let mut one = |item: Bound<'py, PyAny>| -> R<()> {
        let at = attrs.get_or_insert_with(|| Attrs::new(&item, &[a_topic, a_part, a_rate]));
        let t = at.get(&item, 0)?;
        let c = if t.as_ptr() == prev_ptr {
            prev_code
        } else {
            let s = t.downcast::<PyString>().map_err(|_| Unsupported)?;
            let c = table.code(s.to_str()?);
            prev_ptr = t.as_ptr();
            prev_code = c;
            keep.push(t); // keeps prev_ptr alive and unique
            c
        };
        code.push(c);
        number.push(at.get(&item, 1)?.extract::<i64>()?);
        raw.push(at.get(&item, 2)?.extract::<f64>()?);
        Ok(())
    };
    if let Ok(list) = partitions.downcast::<PyList>() {
        for item in list.iter() {
            one(item)?;
        }
    } else if let Ok(tuple) = partitions.downcast::<PyTuple>() {
        for item in tuple.iter() {
            one(item)?;
        }
    } else {
        for item in partitions.try_iter()? {
            one(item?)?;
        }
    }
    drop(keep);
    Ok(finish(table.names, code, number, raw))
}

/// The partitions of a ``capgroup.assignor.model.PartitionTable``, from its columns
/// ``(topics, counts, numbers, rates)`` (``numbers`` and ``rates`` buffers or None): no
/// object per partition is read. What :func:`normalize` makes of the same partitions.
fn normalize_table<'py>(py: Python<'py>, table: &Bound<'py, PyTuple>) -> R<Parts> {
    if table.len() != 4 {
        return Err(Unsupported);
    }
    let names: Vec<String> = table.get_item(0)?.extract()?;
    let counts: Vec<i64> = table.get_item(1)?.extract()?;
    if names.len() != counts.len()
        || names.windows(2).any(|w| w[0] >= w[1])
        || counts.iter().any(|&c| c <= 0)
    {
        return Err(Unsupported); // a table leaves out topics without partitions
    }
    let n = counts.iter().sum::<i64>() as usize;
    let mut code: Vec<u32> = Vec::with_capacity(n);
    for (t, &c) in counts.iter().enumerate() {
        code.resize(code.len() + c as usize, t as u32);
    }
    let numbers = table.get_item(2)?;
    let number: Vec<i64> = if numbers.is_none() {
        let mut out = Vec::with_capacity(n);
        for &c in &counts {
            out.extend(0..c);
        }
        out
    } else {
        i64s(py, &numbers)?
    };
    let rates = table.get_item(3)?;
    let (rate, zero) = if rates.is_none() {
        (vec![0.0; n], vec![true; n])
    } else {
        let raw = f64s(py, &rates)?;
        let zero = raw.iter().map(|&r| r == 0.0).collect();
        (raw.into_iter().map(clean_rate).collect(), zero)
    };
    if number.len() != n || rate.len() != n {
        return Err(Unsupported);
    }
    // Topics are in name order and numbered in order within each: already what ``finish``
    // makes of a list (checked, not trusted: the columns are plain attributes).
    let mut first = Vec::with_capacity(counts.len());
    let mut at = 0usize;
    for &c in &counts {
        first.push(at);
        let run = &number[at..at + c as usize];
        if run.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Unsupported);
        }
        at += c as usize;
    }
    let size: Vec<usize> = counts.iter().map(|&c| c as usize).collect();
    let dense = dense_topics(&number, &first, &size);
    Ok(Parts {
        names,
        ptopic: code,
        number,
        rate,
        zero,
        first,
        size,
        dense,
        no_rates: rates.is_none(),
    })
}

/// Per topic, whether its (ascending, distinct) numbers are ``0..size-1``.
fn dense_topics(number: &[i64], first: &[usize], size: &[usize]) -> Vec<bool> {
    (0..size.len())
        .map(|t| {
            size[t] > 0
                && number[first[t]] == 0
                && number[first[t] + size[t] - 1] == size[t] as i64 - 1
        })
        .collect()
}

/// Sort topic codes by name, then the partitions by (topic, number), merging duplicates.
fn finish(seen: Vec<String>, code: Vec<u32>, mut number: Vec<i64>, raw: Vec<f64>) -> Parts {
    // Topic codes in name order.
    let mut by_name: Vec<u32> = (0..seen.len() as u32).collect();
    by_name.sort_by(|&a, &b| seen[a as usize].cmp(&seen[b as usize]));
    let mut remap = vec![0u32; by_name.len()];
    for (k, &c) in by_name.iter().enumerate() {
        remap[c as usize] = k as u32;
    }
    let names: Vec<String> = by_name.iter().map(|&c| seen[c as usize].clone()).collect();
    let n = code.len();
    let mut ptopic = code;
    if remap.iter().enumerate().any(|(k, &c)| k as u32 != c) {
        for c in ptopic.iter_mut() {
            *c = remap[*c as usize];
        }
    }
    let mut zero: Vec<bool> = raw.iter().map(|&r| r == 0.0).collect();
    let mut rate = raw;
    for r in rate.iter_mut() {
        *r = clean_rate(*r);
    }
    let sorted = (1..n).all(|k| (ptopic[k - 1], number[k - 1]) < (ptopic[k], number[k]));
    if !sorted {
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| (ptopic[a], number[a]).cmp(&(ptopic[b], number[b])));
        let (mut t2, mut n2, mut r2, mut z2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for k in order {
            let key = (ptopic[k], number[k]);
            if let (Some(&lt), Some(&ln)) = (t2.last(), n2.last()) {
                if (lt, ln) == key {
                    let last = r2.len() - 1;
                    if rate[k] > r2[last] {
                        r2[last] = rate[k];
                    }
                    z2[last] = z2[last] || zero[k];
                    continue;
                }
            }
            t2.push(key.0);
            n2.push(key.1);
            r2.push(rate[k]);
            z2.push(zero[k]);
        }
        ptopic = t2;
        number = n2;
        rate = r2;
        zero = z2;
    }
    let n_topics = names.len();
    let mut first = vec![0usize; n_topics];
    let mut size = vec![0usize; n_topics];
    for (j, &t) in ptopic.iter().enumerate() {
        if size[t as usize] == 0 {
            first[t as usize] = j;
        }
        size[t as usize] += 1;
    }
    let dense = dense_topics(&number, &first, &size);
    Parts {
        names,
        ptopic,
        number,
        rate,
        zero,
        first,
        size,
        dense,
        no_rates: false,
    }
}

impl Parts {
    fn locate(&self, t: u32, n: i64) -> i64 {
        let t = t as usize;
        let (lo, size) = (self.first[t], self.size[t]);
        if self.dense[t] {
            return if n >= 0 && (n as usize) < size {
                (lo + n as usize) as i64
            } else {
                -1
            };
        }
        match self.number[lo..lo + size].binary_search(&n) {
            Ok(k) => (lo + k) as i64,
            Err(_) => -1,
        }
    }
}

fn i64s(py: Python<'_>, obj: &Bound<'_, PyAny>) -> R<Vec<i64>> {
    Ok(PyBuffer::<i64>::get(obj)?.to_vec(py)?)
}

fn f64s(py: Python<'_>, obj: &Bound<'_, PyAny>) -> R<Vec<f64>> {
    Ok(PyBuffer::<f64>::get(obj)?.to_vec(py)?)
}

/// Every member's claims, with partition indexes.
fn claims_of(py: Python<'_>, parts: &Parts, members: &Bound<'_, PyList>) -> R<Vec<Claim>> {
    // ``members``: per member its claims (see :func:`plan`).
    let code: HashMap<&str, u32> = parts
        .names
        .iter()
        .enumerate()
        .map(|(k, s)| (s.as_str(), k as u32))
        .collect();
    let lookup = |t: &Bound<'_, PyAny>| -> R<i64> {
        let s = t.downcast::<PyString>().map_err(|_| Unsupported)?;
        Ok(code.get(s.to_str()?).map_or(-1, |&c| c as i64))
    };
    let a_topic = intern!(py, "topic");
    let a_part = intern!(py, "partition");
    let a_gen = intern!(py, "generation");
    let a_rate = intern!(py, "rate");
    // Every claim the members list, counted first: pushing 10,000 claims into a vector
    // grown as it goes cost more in copies than reading them.
    let mut total = 0usize;
    for claims in members.iter() {
        if let Ok(native) = claims.downcast::<Claims>() {
            total += native.get().owned.partitions.len();
        } else if let Ok(tup) = claims.downcast::<PyTuple>() {
            total += tup.len();
        }
    }
    let mut out = Vec::with_capacity(total);
    let mut attrs: Option<Attrs<'_>> = None;
    let mut keep: Vec<Bound<'_, PyAny>> = Vec::new();
    for (i, claims) in members.iter().enumerate() {
        if claims.is_none() {
            continue;
        }
        if let Ok(native) = claims.downcast::<Claims>() {
            let o = &native.get().owned;
            let mut k = 0usize;
            let mut c = -1i64;
            for (t, &cnt) in o.topics().zip(o.counts.iter()) {
                // A member lists its topics in order, and often the table's next one: that
                // is checked before the name is hashed (with ingress rates a member holds a
                // partition of nearly every topic, and hashing was most of this loop).
                let next = (c + 1) as usize;
                c = if parts.names.get(next).is_some_and(|name| name == t) {
                    next as i64
                } else {
                    code.get(t).map_or(-1, |&c| c as i64)
                };
                for _ in 0..cnt {
                    let part = if c >= 0 {
                        parts.locate(c as u32, o.partitions[k])
                    } else {
                        -1
                    };
                    out.push(Claim {
                        part,
                        member: i,
                        gen: o.generations[k],
                        rate: o.rates[k],
                    });
                    k += 1;
                }
            }
            continue;
        }
        let tup = claims.downcast::<PyTuple>().map_err(|_| Unsupported)?;
        if tup.len() == 6 && tup.get_item(0)?.extract::<&str>().ok() == Some("columns") {
            // ("columns", topics, counts, partitions, generations, rates)
            let topics = tup.get_item(1)?;
            let counts = i64s(py, &tup.get_item(2)?)?;
            let numbers = i64s(py, &tup.get_item(3)?)?;
            let gens = i64s(py, &tup.get_item(4)?)?;
            let rates = f64s(py, &tup.get_item(5)?)?;
            if numbers.len() != gens.len() || numbers.len() != rates.len() {
                return Err(Unsupported);
            }
            let mut k = 0usize;
            for (t, &cnt) in topics.try_iter()?.zip(counts.iter()) {
                let c = lookup(&t?)?;
                if cnt < 0 || k + cnt as usize > numbers.len() {
                    return Err(Unsupported);
                }
                for _ in 0..cnt {
                    let part = if c >= 0 {
                        parts.locate(c as u32, numbers[k])
                    } else {
                        -1
                    };
                    out.push(Claim {
                        part,
                        member: i,
                        gen: gens[k],
                        rate: rates[k],
                    });
                    k += 1;
                }
            }
            if k != numbers.len() {
                return Err(Unsupported);
            }
        } else {
            let mut prev_ptr: *mut pyo3::ffi::PyObject = std::ptr::null_mut();
            let mut prev_code = -1i64;
            for op in tup.iter() {
                let at =
                    attrs.get_or_insert_with(|| Attrs::new(&op, &[a_topic, a_part, a_gen, a_rate]));
                let t = at.get(&op, 0)?;
                let c = if t.as_ptr() == prev_ptr {
                    prev_code
                } else {
                    let c = lookup(&t)?;
                    prev_ptr = t.as_ptr();
                    prev_code = c;
                    keep.push(t); // keeps prev_ptr alive and unique
                    c
                };
                let number = at.get(&op, 1)?.extract::<i64>()?;
                let part = if c >= 0 {
                    parts.locate(c as u32, number)
                } else {
                    -1
                };
                out.push(Claim {
                    part,
                    member: i,
                    gen: at.get(&op, 2)?.extract::<i64>()?,
                    rate: at.get(&op, 3)?.extract::<f64>()?,
                });
            }
        }
    }
    Ok(out)
}

fn clean_weight(w: f64) -> f64 {
    if w.is_finite() && w > 0.0 {
        w
    } else {
        1e-6
    }
}

/// The members as :func:`plan` takes them: distinct limit rows, a row per member, claims.
struct MemberInput<'a, 'py> {
    limits: &'a Bound<'py, PyList>,
    rows: Vec<usize>,
    claims: &'a Bound<'py, PyList>,
}

fn run_plan(
    py: Python<'_>,
    partitions: &Bound<'_, PyAny>,
    table: Option<&Bound<'_, PyTuple>>,
    members: MemberInput<'_, '_>,
    classes: &Bound<'_, PyList>,
    generation: i64,
    claimed_rates: bool,
) -> R<PyObject> {
    let trace = std::env::var_os("CAPGROUP_ASSIGNOR_NATIVE_TRACE").is_some();
    let t0 = std::time::Instant::now();
    #[cfg(feature = "mutants")]
    let mutant = mutants::active();
    let lap = |what: &str| {
        if trace {
            eprintln!("native {what}: {:.2} ms", t0.elapsed().as_secs_f64() * 1e3);
        }
    };
    let mut parts = match table {
        Some(columns) => normalize_table(py, columns)?,
        None => normalize(py, partitions)?,
    };
    lap("normalize");
    let n_parts = parts.ptopic.len();
    if n_parts > u32::MAX as usize {
        return Err(Unsupported); // partition indexes are packed in 32 bits
    }
    let n_topics = parts.names.len();
    if members.claims.len() != members.rows.len() {
        return Err(Unsupported);
    }
    let claims = claims_of(py, &parts, members.claims)?;
    // Only a claim with a rate above 0 can raise a partition's rate.
    if claimed_rates && claims.iter().any(|c| c.part >= 0 && c.rate > 0.0) {
        let mut claimed = vec![0.0f64; n_parts];
        for c in &claims {
            if c.part >= 0 && c.rate > claimed[c.part as usize] {
                claimed[c.part as usize] = c.rate;
            }
        }
        for ((rate, &zero), &claim) in parts.rate.iter_mut().zip(&parts.zero).zip(&claimed) {
            if zero {
                let better = clean_rate(claim);
                if better > *rate {
                    *rate = better;
                }
            }
        }
    }
    let resolved = resolve_claims(n_parts, &claims, generation);
    // A fresh group (nobody claims a partition here) skips the passes over the owners.
    let owned_any = claims.iter().any(|c| c.part >= 0);
    drop(claims);
    // No rate anywhere (none in the table, no claim): every partition weighs the same,
    // as ``load_units`` finds after a pass over both.
    let unit = if parts.no_rates && !owned_any {
        vec![LOAD_BASE; n_parts]
    } else {
        load_units(&parts.rate, &resolved.owner_rate).ok_or(Unsupported)?
    };
    lap("claims+units");

    // Classes: (eligible, topics, partition_bytes dict, default cost).
    let tindex: HashMap<&str, usize> = parts
        .names
        .iter()
        .enumerate()
        .map(|(k, s)| (s.as_str(), k))
        .collect();
    if classes.len().saturating_mul(n_topics.max(1)) > MAX_TABLE {
        return Err(Unsupported);
    }
    let mut ccost: Vec<Vec<i128>> = Vec::with_capacity(classes.len());
    for cls in classes.iter() {
        let cls = cls.downcast::<PyTuple>().map_err(|_| Unsupported)?;
        let eligible: bool = cls.get_item(0)?.extract()?;
        // Mutant ``ignore_draining``: draining members' classes become eligible (the
        // wrapper merged those classes by costs alone, so they take the first one's topics).
        #[cfg(feature = "mutants")]
        let eligible = eligible || mutant == Some("ignore_draining");
        let mut row = vec![-1i128; n_topics];
        if eligible {
            let pb = cls.get_item(2)?;
            let pb = pb.downcast::<PyDict>().map_err(|_| Unsupported)?;
            let default: i128 = cls.get_item(3)?.extract()?;
            for t in cls.get_item(1)?.try_iter()? {
                let t = t?;
                let s = t.downcast::<PyString>().map_err(|_| Unsupported)?;
                if let Some(&k) = tindex.get(s.to_str()?) {
                    let cost: i128 = match pb.get_item(&t)? {
                        Some(v) => v.extract()?,
                        None => default,
                    };
                    row[k] = cost.max(0);
                }
            }
        }
        ccost.push(row);
    }
    // Limit rows: (class, max_partitions, budget, weight, draining, relay bytes), read once
    // per distinct row (the members of one deployment share theirs).
    let mut rows: Vec<(usize, i64, i128, f64, bool, i128)> =
        Vec::with_capacity(members.limits.len());
    for m in members.limits.iter() {
        let m = m.downcast::<PyTuple>().map_err(|_| Unsupported)?;
        let cls: usize = m.get_item(0)?.extract()?;
        if cls >= ccost.len() {
            return Err(Unsupported);
        }
        let draining: bool = m.get_item(4)?.extract()?;
        #[cfg(feature = "mutants")]
        let draining = draining && mutant != Some("ignore_draining");
        rows.push((
            cls,
            m.get_item(1)?.extract()?,
            m.get_item(2)?.extract()?,
            m.get_item(3)?.extract()?,
            draining,
            m.get_item(5)?.extract()?,
        ));
    }
    let n = members.rows.len();
    let mut lim = Limits {
        cap: Vec::with_capacity(n),
        budget: Vec::with_capacity(n),
        weight: Vec::with_capacity(n),
        mcls: Vec::with_capacity(n),
        ccost,
    };
    let mut relay_bytes: Vec<i128> = Vec::with_capacity(n);
    for &r in &members.rows {
        let &(cls, max_partitions, budget, weight, draining, relay) =
            rows.get(r).ok_or(Unsupported)?;
        lim.cap
            .push(if draining { 0 } else { max_partitions.max(0) });
        lim.budget.push(if draining { -1 } else { budget });
        lim.weight.push(clean_weight(weight));
        lim.mcls.push(cls);
        relay_bytes.push(relay);
    }
    let crate::core::Claims {
        owner,
        owner_rate: _,
        conflicts,
        stale,
        bogus,
    } = resolved;
    let ptopic = std::mem::take(&mut parts.ptopic);
    let mut st = capacities(lim, n_topics, ptopic, unit).ok_or(Unsupported)?;
    #[cfg(feature = "mutants")]
    {
        st.mutant = mutant;
        if mutant == Some("ignore_max_partitions") {
            st.cap = vec![1 << 30; n];
        }
        if mutant == Some("ignore_weights") {
            st.weight = vec![1.0; n];
        }
    }

    // Each member's owned partitions, ascending (sized first: no vector grows as it fills).
    let mut mine: Vec<Vec<usize>> = vec![Vec::new(); n];
    if owned_any {
        let mut held = vec![0usize; n];
        for &i in &owner {
            if i >= 0 {
                held[i as usize] += 1;
            }
        }
        mine = held.into_iter().map(Vec::with_capacity).collect();
        for (j, &i) in owner.iter().enumerate() {
            if i >= 0 {
                mine[i as usize].push(j);
            }
        }
    }
    lap("capacities");
    let shed = keep_owned(&mut st, &mine);
    lap("keep");
    let mut free: Vec<usize> = Vec::with_capacity(n_parts);
    for (j, &t) in st.target.iter().enumerate() {
        if t < 0 {
            free.push(j);
        }
    }
    #[cfg(feature = "mutants")]
    let (free, early) = mutants::relay_early(&mut st, free, &relay_bytes, &owner, &conflicts);
    let unplaced = place_free(&mut st, &free).ok_or(Unsupported)?;
    #[cfg(feature = "mutants")]
    mutants::uncharge(&mut st, &early, &relay_bytes);
    lap("place");
    augment(&mut st, &unplaced);
    balance(&mut st, &owner);
    lap("augment+balance");
    let relay_out = relay(&st, &relay_bytes, &owner, &conflicts);
    #[cfg(feature = "mutants")]
    let relay_out = early.unwrap_or(relay_out);

    lap("relay");
    // ------------------------------------------------------------------ output
    let target = &st.target;
    let mut relayed = vec![false; if relay_out.is_empty() { 0 } else { n_parts }];
    let mut n_relayed = 0usize;
    let mut relayed_unowned = 0usize;
    for js in relay_out.values() {
        for &j in js {
            relayed[j] = true;
            n_relayed += 1;
            if owner[j] < 0 {
                relayed_unowned += 1;
            }
        }
    }
    // Pending moves: away from a valid owner to another member, or given to a tied claimant.
    let mut moves: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    let mut n_out = 0usize;
    let mut kept = 0usize;
    for j in 0..n_parts {
        let (o, t) = (owner[j], target[j]);
        if t < 0 {
            n_out += 1;
        } else if o >= 0 {
            if t == o {
                kept += 1;
            } else {
                moves.insert(j, (o as usize, t as usize));
            }
        }
    }
    for (&j, tied) in &conflicts {
        let to = target[j];
        if to >= 0 {
            let from = if tied[0] as i64 != to {
                tied[0]
            } else {
                tied[1]
            };
            moves.insert(j, (from, to as usize));
        }
    }
    #[cfg(feature = "mutants")]
    {
        if mutant == Some("drop_withholding") {
            moves.clear(); // every move lands at once: nothing pends
        }
    }
    // Holder of each partition this round (withheld ones held by nobody); the partitions in
    // a stable order by holder, and where each member's run starts.
    let mut withheld: Vec<bool> = Vec::new();
    if !moves.is_empty() {
        withheld = vec![false; n_parts];
        for &j in moves.keys() {
            withheld[j] = true;
        }
    }
    let holder = |j: usize| -> usize {
        let t = target[j];
        if t < 0 || (!withheld.is_empty() && withheld[j]) {
            0
        } else {
            t as usize + 1
        }
    };
    lap("moves");
    // How many partitions each holder has: a member all those it is the target of
    // (``st.count``) but the withheld ones, nobody the rest.
    let mut start = vec![0usize; n + 2];
    start[1] = n_out + moves.len();
    for (i, &c) in st.count.iter().enumerate() {
        start[i + 2] = c as usize;
    }
    for &(_, to) in moves.values() {
        start[to + 2] -= 1;
    }
    for k in 1..n + 2 {
        start[k] += start[k - 1];
    }
    lap("start");
    // The output columns stay in this extension's memory (kept for the next plan, see
    // ``retain``), handed to Python as buffers: no copy, and no fresh pages.
    let mut order = vec![0i64; n_parts];
    let mut fill = start.clone();
    for j in 0..n_parts {
        let h = holder(j);
        order[fill[h]] = j as i64;
        fill[h] += 1;
    }
    let bounds: Vec<i64> = start[1..].iter().map(|&s| s as i64).collect();
    #[cfg(feature = "mutants")]
    let (order, bounds) = {
        let (mut order, mut bounds) = (order, bounds);
        if mutant == Some("give_one_partition_twice") {
            mutants::give_one_partition_twice(&mut order, &mut bounds);
        }
        (order, bounds)
    };
    lap("order");
    let topic_col: Vec<i64> = st.ptopic.iter().map(|&t| t as i64).collect();
    let number_col = std::mem::take(&mut parts.number);
    let key = |j: usize| (st.ptopic[j], number_col[j]);
    lap("topic+number");
    let pending: Vec<(u32, i64, usize, usize)> = moves
        .iter()
        .map(|(&j, &(a, b))| (key(j).0, key(j).1, a, b))
        .collect();
    let unassigned: Vec<(u32, i64)> = if n_out > n_relayed {
        (0..n_parts)
            .filter(|&j| target[j] < 0 && (relayed.is_empty() || !relayed[j]))
            .map(key)
            .collect()
    } else {
        Vec::new()
    };
    let moved = n_parts - n_out - kept + relayed_unowned;
    let relay_list: Vec<(usize, Vec<(u32, i64)>)> = relay_out
        .into_iter()
        .map(|(i, mut js)| {
            js.sort_unstable();
            (i, js.into_iter().map(key).collect())
        })
        .collect();
    let result = (
        parts.names.clone(),
        Column::new(py, topic_col)?,
        Column::new(py, number_col)?,
        Column::new(py, order)?,
        Column::new(py, bounds)?,
        pending,
        unassigned,
        relay_list,
        (conflicts.len(), stale, bogus, shed, moved, n_relayed),
        parts.size.clone(),
    );
    lap("output");
    Ok(result.into_pyobject(py)?.into_any().unbind())
}

/// The whole assignor pipeline; None when this input is left to the Python path.
///
/// The members, in member-id order: ``rows[k]`` indexes member ``k``'s limits in ``limits``,
/// ``(class, max_partitions, memory_budget_bytes, weight, draining,
/// relay_partition_bytes)`` (members that advertise alike share a row), and ``claims[k]`` is
/// None, a tuple of ``OwnedPartition``, a :class:`Claims` or ``("columns", topics, counts,
/// partitions, generations, rates)``; ``classes``: ``(eligible, topics, partition_bytes,
/// default)``. ``table``, when given, is ``(topics, counts, numbers, rates)``, the columns of
/// a ``PartitionTable``, read in place of ``partitions``.
#[pyfunction]
#[pyo3(signature = (partitions, limits, rows, claims, classes, generation, claimed_rates, table=None))]
#[allow(clippy::too_many_arguments)] // the Python wrapper is the one caller
fn plan(
    py: Python<'_>,
    partitions: &Bound<'_, PyAny>,
    limits: &Bound<'_, PyList>,
    rows: Vec<usize>,
    claims: &Bound<'_, PyList>,
    classes: &Bound<'_, PyList>,
    generation: i64,
    claimed_rates: bool,
    table: Option<&Bound<'_, PyTuple>>,
) -> PyResult<Option<PyObject>> {
    let members = MemberInput {
        limits,
        rows,
        claims,
    };
    match run_plan(
        py,
        partitions,
        table,
        members,
        classes,
        generation,
        claimed_rates,
    ) {
        Ok(obj) => Ok(Some(obj)),
        Err(Unsupported) => Ok(None),
    }
}

/// An int64 column the core made, kept in the extension's memory and read by Python through
/// the buffer protocol (``numpy.frombuffer(column, numpy.int64)``, ``memoryview``): handing a
/// million-row column over costs neither a copy nor fresh pages.
#[pyclass(frozen, module = "capgroup._native")]
struct Column {
    data: Vec<i64>,
    /// ``shape`` and ``strides`` of the one-dimensional view, pointed to by every buffer.
    shape: [pyo3::ffi::Py_ssize_t; 1],
    strides: [pyo3::ffi::Py_ssize_t; 1],
}

impl Column {
    fn new(py: Python<'_>, data: Vec<i64>) -> PyResult<Py<Column>> {
        let len = data.len() as pyo3::ffi::Py_ssize_t;
        Py::new(
            py,
            Column {
                data,
                shape: [len],
                strides: [8],
            },
        )
    }
}

#[pymethods]
impl Column {
    /// A read-only buffer over the column (format ``q``: native int64).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        use pyo3::ffi;
        if view.is_null() {
            return Err(pyo3::exceptions::PyBufferError::new_err("no view to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "a column of the assignor's core is read-only",
            ));
        }
        let this = slf.get();
        (*view).buf = this.data.as_ptr() as *mut std::os::raw::c_void;
        (*view).len = (this.data.len() * 8) as ffi::Py_ssize_t;
        (*view).readonly = 1;
        (*view).itemsize = 8;
        (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
            c"q".as_ptr() as *mut std::os::raw::c_char
        } else {
            std::ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
            this.shape.as_ptr() as *mut ffi::Py_ssize_t
        } else {
            std::ptr::null_mut()
        };
        (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
            this.strides.as_ptr() as *mut ffi::Py_ssize_t
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
        // The view holds a reference: the column outlives every buffer over it.
        (*view).obj = slf.into_any().into_ptr();
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

/// Every member's ``ConsumerProtocolMemberAssignment`` v0 (as
/// ``capgroup.protocol.consumer.encode_member_assignment_columns`` writes it), from the
/// columns :func:`plan` returned; None if a name or number does not fit the format.
#[pyfunction]
fn encode_assignments(
    py: Python<'_>,
    topic: &Bound<'_, PyAny>,
    number: &Bound<'_, PyAny>,
    order: &Bound<'_, PyAny>,
    bounds: &Bound<'_, PyAny>,
    names: Vec<String>,
    user_data: &[u8],
) -> PyResult<Option<Vec<PyObject>>> {
    /// The int64 column of a :class:`Column` (borrowed) or of native-endian bytes (copied
    /// only when not aligned); None for anything else.
    fn column<'a>(obj: &'a Bound<'_, PyAny>) -> Option<std::borrow::Cow<'a, [i64]>> {
        if let Ok(col) = obj.downcast::<Column>() {
            return Some(std::borrow::Cow::Borrowed(col.get().data.as_slice()));
        }
        let b = obj.downcast::<PyBytes>().ok()?.as_bytes();
        // SAFETY: every bit pattern is a valid i64; align_to checks the alignment.
        let (head, body, tail) = unsafe { b.align_to::<i64>() };
        Some(if head.is_empty() && tail.is_empty() {
            std::borrow::Cow::Borrowed(body)
        } else {
            std::borrow::Cow::Owned(
                b.chunks_exact(8)
                    .map(|c| i64::from_ne_bytes(c.try_into().unwrap()))
                    .collect(),
            )
        })
    }
    if names.iter().any(|s| s.len() > i16::MAX as usize) {
        return Ok(None);
    }
    let (Some(topic), Some(number), Some(order), Some(bounds)) =
        (column(topic), column(number), column(order), column(bounds))
    else {
        return Ok(None);
    };
    let n_parts = topic.len();
    if number.len() != n_parts || order.len() != n_parts {
        return Ok(None);
    }
    let n = bounds.len().saturating_sub(1);
    let mut out = Vec::with_capacity(n);
    let mut buf: Vec<u8> = Vec::new();
    let mut mine: Vec<(i64, i64)> = Vec::new();
    for i in 0..n {
        let (lo, hi) = (bounds[i], bounds[i + 1]);
        if lo < 0 || hi < lo || hi as usize > n_parts {
            return Ok(None);
        }
        let js = &order[lo as usize..hi as usize];
        if js.iter().any(|&j| j < 0 || j as usize >= n_parts) {
            return Ok(None);
        }
        buf.clear();
        let written =
            if js.last().map_or(0, |&j| j + 1) - js.first().map_or(0, |&j| j) == js.len() as i64 {
                // One range of the columns (without ingress rates, members take ranges).
                let at = |k: usize| (topic[js[k] as usize], number[js[k] as usize]);
                write_assignment(&mut buf, js.len(), at, &names, user_data)
            } else {
                // Scattered: each partition's (topic, number) gathered before they are written,
                // so the loads do not wait on each other (with ingress rates a member's
                // partitions lie far apart, and nearly every load missed the cache).
                mine.clear();
                mine.extend(js.iter().map(|&j| (topic[j as usize], number[j as usize])));
                write_assignment(&mut buf, js.len(), |k| mine[k], &names, user_data)
            };
        if written.is_none() {
            return Ok(None);
        }
        out.push(PyBytes::new(py, &buf).into_any().unbind());
    }
    Ok(Some(out))
}

/// One ``ConsumerProtocolMemberAssignment`` (version 0) into ``buf``: the ``len`` partitions
/// ``at(k)`` gives as (topic code, number), in topic runs, then ``user_data``. One pass: a
/// run's count is written when the next run starts. None when a code or a number does not
/// fit.
fn write_assignment(
    buf: &mut Vec<u8>,
    len: usize,
    at: impl Fn(usize) -> (i64, i64),
    names: &[String],
    user_data: &[u8],
) -> Option<()> {
    buf.reserve(10 + 4 * len + user_data.len());
    buf.extend_from_slice(&0i16.to_be_bytes());
    let runs_at = buf.len();
    buf.extend_from_slice(&0i32.to_be_bytes());
    let mut runs = 0i32;
    // The current run: its topic code, where its count goes, and where its numbers start.
    let mut run: Option<(i64, usize, usize)> = None;
    let close = |buf: &mut Vec<u8>, run: Option<(i64, usize, usize)>| {
        if let Some((_, count_at, first)) = run {
            let count = ((buf.len() - first) / 4) as i32;
            buf[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
        }
    };
    for k in 0..len {
        let (t, p) = at(k);
        if run.is_none_or(|(current, _, _)| current != t) {
            close(buf, run);
            let name = names.get(usize::try_from(t).ok()?)?.as_bytes();
            buf.extend_from_slice(&(name.len() as i16).to_be_bytes());
            buf.extend_from_slice(name);
            let count_at = buf.len();
            buf.extend_from_slice(&0i32.to_be_bytes());
            run = Some((t, count_at, buf.len()));
            runs += 1;
        }
        buf.extend_from_slice(&i32::try_from(p).ok()?.to_be_bytes());
    }
    close(buf, run);
    buf[runs_at..runs_at + 4].copy_from_slice(&runs.to_be_bytes());
    buf.extend_from_slice(&(user_data.len() as i32).to_be_bytes());
    buf.extend_from_slice(user_data);
    Some(())
}

/// A member's ownership claims as :func:`decode_members` decoded them (the columns of
/// ``capgroup.protocol.capacity.OwnedColumns``, kept on the Rust side for :func:`plan`).
#[pyclass(frozen, module = "capgroup._native")]
struct Claims {
    owned: decode::Owned,
}

#[pymethods]
impl Claims {
    /// ``(topics, counts, partitions, generations, rates)``: the topic names, then int64,
    /// int64, int64 and float64 columns as native-endian bytes.
    fn columns(&self, py: Python<'_>) -> (Vec<String>, PyObject, PyObject, PyObject, PyObject) {
        let o = &self.owned;
        (
            o.topics().map(str::to_owned).collect(),
            bytes_of(py, &o.counts),
            bytes_of(py, &o.partitions),
            bytes_of(py, &o.generations),
            bytes_of(py, &o.rates),
        )
    }

    fn __len__(&self) -> usize {
        self.owned.partitions.len()
    }
}

/// An advertisement without its claims, as a key: members of one deployment advertise alike.
#[derive(Clone, Hash, PartialEq, Eq)]
struct AdvKey {
    max_partitions: u64,
    budget: u64,
    default_cost: u64,
    weight_bits: u64,
    rack: Option<String>,
    draining: bool,
    partition_bytes: Vec<(String, u64)>,
    relay_cost: u64,
}

/// One member's metadata as the compiled decoder read it: its version, its topics (one
/// shared tuple per distinct subscription), the index of its advertisement among the
/// distinct ones, and its claims.
type Decoded<'py> = (i16, Bound<'py, PyTuple>, usize, Option<Py<Claims>>);

/// Every member's metadata decoded (None where the Python decoders must look), and the
/// distinct advertisements, claims aside, as :func:`decode_members` describes them.
fn decode_all<'py>(
    py: Python<'py>,
    datas: &Bound<'py, PyList>,
) -> PyResult<(Vec<Option<Decoded<'py>>>, Bound<'py, PyList>)> {
    let mut out = Vec::with_capacity(datas.len());
    // Members of one deployment subscribe alike: one tuple of names per distinct block.
    let mut subscriptions: HashMap<Vec<u8>, Bound<'py, PyTuple>> = HashMap::new();
    let mut last: Option<(Vec<u8>, Bound<'py, PyTuple>)> = None;
    let mut advs: HashMap<AdvKey, usize> = HashMap::new();
    let mut last_adv: Option<(AdvKey, usize)> = None;
    let advs_out = PyList::empty(py);
    for data in datas.iter() {
        let bytes = data.downcast::<PyBytes>().ok();
        let found = bytes
            .as_ref()
            .and_then(|b| decode::decode_metadata(b.as_bytes()));
        let topics = match &found {
            None => None,
            // Usually the previous member's subscription: one comparison, no hashing.
            Some(m)
                if last
                    .as_ref()
                    .is_some_and(|(b, _)| b.as_slice() == m.topic_block) =>
            {
                last.as_ref().map(|(_, t)| t.clone())
            }
            Some(m) => {
                let t = match subscriptions.get(m.topic_block) {
                    Some(t) => Some(t.clone()),
                    None => match decode::topics_of(m.topic_block, m.n_topics) {
                        None => None,
                        Some(names) => {
                            let t = PyTuple::new(py, names)?;
                            subscriptions.insert(m.topic_block.to_vec(), t.clone());
                            Some(t)
                        }
                    },
                };
                if let Some(t) = &t {
                    last = Some((m.topic_block.to_vec(), t.clone()));
                }
                t
            }
        };
        let (Some(m), Some(topics)) = (found, topics) else {
            out.push(None);
            continue;
        };
        let a = m.adv;
        let claims = match a.owned {
            Some(owned) => Some(Py::new(py, Claims { owned })?),
            None => None,
        };
        let key = AdvKey {
            max_partitions: a.max_partitions,
            budget: a.budget,
            default_cost: a.default_cost,
            weight_bits: a.weight.to_bits(),
            rack: a.rack,
            draining: a.draining,
            partition_bytes: a.partition_bytes,
            relay_cost: a.relay_cost,
        };
        // Usually the previous member's advertisement: one comparison, no hashing.
        let k = match &last_adv {
            Some((last, k)) if *last == key => *k,
            _ => {
                let k = match advs.get(&key) {
                    Some(&k) => k,
                    None => {
                        let k = advs_out.len();
                        advs_out.append((
                            key.max_partitions,
                            key.budget,
                            key.default_cost,
                            a.weight,
                            key.rack.clone(),
                            key.draining,
                            key.partition_bytes.clone(),
                            key.relay_cost,
                        ))?;
                        advs.insert(key.clone(), k);
                        k
                    }
                };
                last_adv = Some((key, k));
                k
            }
        };
        out.push(Some((m.version, topics, k, claims)));
    }
    Ok((out, advs_out))
}

/// Each member's JoinGroup metadata decoded, or None where the Python decoders must look.
///
/// Returns ``(members, advertisements)``: per member None or ``(version, topics, k, claims)``
/// with ``topics`` a tuple of names (one shared tuple per distinct subscription), ``k`` an
/// index into ``advertisements`` and ``claims`` a :class:`Claims` or None; per distinct
/// advertisement (claims aside) ``(max_partitions, memory_budget_bytes,
/// default_partition_bytes, weight, rack, draining, partition_bytes, relay_partition_bytes)``
/// with ``partition_bytes`` a list of pairs. Members that advertise alike share one entry, so
/// the caller builds one object for them all.
#[pyfunction]
fn decode_members(
    py: Python<'_>,
    datas: &Bound<'_, PyList>,
) -> PyResult<(Vec<PyObject>, PyObject)> {
    let (found, advs) = decode_all(py, datas)?;
    let mut out = Vec::with_capacity(found.len());
    for member in found {
        out.push(match member {
            None => py.None(),
            Some(d) => d.into_pyobject(py)?.into_any().unbind(),
        });
    }
    Ok((out, advs.into_any().unbind()))
}

/// A group's JoinGroup metadata decoded as profiles, or None when any member's metadata is
/// left to the Python decoders.
///
/// Returns ``(profiles, rows, claims, advertisements)``: the distinct ``(version, topics,
/// k)`` of the members (``topics`` and ``k`` as :func:`decode_members` gives them), per
/// member the index of its profile and its claims (a :class:`Claims` or None), and the
/// distinct advertisements. A group's members mostly share one profile: the caller works per
/// profile, and per member only with the indexes.
#[pyfunction]
fn decode_group(py: Python<'_>, datas: &Bound<'_, PyList>) -> PyResult<Option<PyObject>> {
    let (found, advs) = decode_all(py, datas)?;
    let mut profiles: Vec<(i16, Bound<'_, PyTuple>, usize)> = Vec::new();
    let mut index: HashMap<(i16, usize, usize), usize> = HashMap::new();
    let mut rows = Vec::with_capacity(found.len());
    let mut claims = Vec::with_capacity(found.len());
    for member in found {
        let Some((version, topics, k, held)) = member else {
            return Ok(None);
        };
        // The topics tuple is shared per distinct subscription: its address is its identity.
        let key = (version, topics.as_ptr() as usize, k);
        let row = *index.entry(key).or_insert_with(|| {
            profiles.push((version, topics, k));
            profiles.len() - 1
        });
        rows.push(row);
        claims.push(match held {
            Some(c) => c.into_any(),
            None => py.None(),
        });
    }
    Ok(Some(
        (profiles, rows, claims, advs)
            .into_pyobject(py)?
            .into_any()
            .unbind(),
    ))
}

/// ``math.fsum`` of ``values`` as the core computes it (None where CPython raises
/// OverflowError): the tests hold it to ``math.fsum``.
#[pyfunction]
#[pyo3(name = "fsum")]
fn exact_sum(values: Vec<f64>) -> Option<f64> {
    crate::core::fsum(&values)
}

/// Bytes of freed large blocks the extension keeps for its next plan.
#[pyfunction]
fn kept_bytes() -> usize {
    retain::kept()
}

/// Return the blocks the extension keeps to the system; the bytes released.
#[pyfunction]
fn release_memory() -> usize {
    retain::release()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(kept_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(exact_sum, m)?)?;
    m.add_function(wrap_pyfunction!(release_memory, m)?)?;
    m.add_function(wrap_pyfunction!(plan, m)?)?;
    m.add_function(wrap_pyfunction!(encode_assignments, m)?)?;
    m.add_function(wrap_pyfunction!(decode_members, m)?)?;
    m.add_function(wrap_pyfunction!(decode_group, m)?)?;
    m.add_class::<Claims>()?;
    m.add_class::<Column>()?;
    m.add("ABI", 1)?;
    #[cfg(feature = "mutants")]
    {
        m.add_function(wrap_pyfunction!(mutants::set_mutant, m)?)?;
        m.add("MUTANTS", mutants::NAMES.to_vec())?;
    }
    Ok(())
}

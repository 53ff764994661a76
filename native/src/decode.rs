//! JoinGroup member metadata (``ConsumerProtocolMemberMetadata`` around a capgroup capacity
//! advertisement), decoded as ``capgroup.protocol.consumer.decode_member_metadata`` and
//! ``capgroup.protocol.capacity.decode_advertisement`` decode it. Anything these would
//! reject, and anything unusual, gives None: the Python decoders then decode it (or name
//! the error), so this decoder only has to be exact on what it accepts.

const MAX_MEMBER_METADATA_BYTES: usize = 1024 * 1024;
const MAX_ENCODED_BYTES: usize = 64 * 1024;
const MAX_NAME_BYTES: u128 = 255;
const INT32_MAX: u128 = (1 << 31) - 1;
const INT63_MAX: u128 = (1 << 63) - 1;
const U64_MAX: u128 = u64::MAX as u128;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn raw(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.remaining() {
            return None;
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.raw(1)?[0])
    }

    /// An unsigned LEB128 varint of at most ``max``. Most are one byte (partition gaps,
    /// generation indexes): that case is read inline.
    #[inline]
    fn uvarint(&mut self, max: u128) -> Option<u128> {
        if self.pos < self.end {
            let b = self.buf[self.pos];
            if b < 0x80 {
                self.pos += 1;
                let value = b as u128;
                return if value > max { None } else { Some(value) };
            }
        }
        self.uvarint_long(max)
    }

    #[inline(never)]
    fn uvarint_long(&mut self, max: u128) -> Option<u128> {
        let mut value: u128 = 0;
        for k in 0..10 {
            let b = self.u8()?;
            value |= ((b & 0x7F) as u128) << (7 * k);
            if b & 0x80 == 0 {
                return if value > max { None } else { Some(value) };
            }
        }
        None
    }

    fn svarint(&mut self, lo: i128, hi: i128) -> Option<i128> {
        let raw = self.uvarint(U64_MAX)?;
        let value = ((raw >> 1) as i128) ^ -((raw & 1) as i128);
        if value < lo || value > hi {
            return None;
        }
        Some(value)
    }

    fn count(&mut self, min_item: usize, max: u128) -> Option<usize> {
        let n = self.uvarint(max)? as usize;
        if n.checked_mul(min_item)? > self.remaining() {
            return None;
        }
        Some(n)
    }

    fn text(&mut self, max: u128) -> Option<&'a str> {
        let n = self.uvarint(max)? as usize;
        std::str::from_utf8(self.raw(n)?).ok()
    }

    fn name(&mut self) -> Option<&'a str> {
        let s = self.text(MAX_NAME_BYTES)?;
        if s.is_empty() {
            None
        } else {
            Some(s)
        }
    }

    fn window(&mut self, n: usize) -> Option<Reader<'a>> {
        let start = self.pos;
        self.raw(n)?;
        Some(Reader {
            buf: self.buf,
            pos: start,
            end: start + n,
        })
    }

    fn be_i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.raw(2)?.try_into().ok()?))
    }

    fn be_i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.raw(4)?.try_into().ok()?))
    }
}

/// A member's claims, as columns (topics in encoding order, ``counts`` claims each).
#[derive(Default)]
pub struct Owned {
    /// The topic names, one after the other (one allocation per member, not per topic).
    pub names: String,
    /// Where each topic's name ends in ``names``.
    pub name_ends: Vec<usize>,
    pub counts: Vec<i64>,
    pub partitions: Vec<i64>,
    pub generations: Vec<i64>,
    pub rates: Vec<f64>,
}

impl Owned {
    /// The topic names, in order.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.name_ends.iter().copied());
        starts
            .zip(self.name_ends.iter().copied())
            .map(|(a, b)| &self.names[a..b])
    }
}

pub struct Advertisement {
    pub max_partitions: u64,
    pub budget: u64,
    pub default_cost: u64,
    pub weight: f64,
    pub rack: Option<String>,
    pub draining: bool,
    pub partition_bytes: Vec<(String, u64)>,
    pub relay_cost: u64,
    pub owned: Option<Owned>,
}

pub struct Metadata<'a> {
    pub version: i16,
    /// The subscription's bytes (``n_topics`` names, checked for length) and its count;
    /// :func:`topics_of` turns them into names.
    pub topic_block: &'a [u8],
    pub n_topics: usize,
    pub adv: Advertisement,
}

/// The names in a subscription block; None if one is not valid UTF-8.
pub fn topics_of(block: &[u8], n: usize) -> Option<Vec<String>> {
    let mut r = Reader {
        buf: block,
        pos: 0,
        end: block.len(),
    };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let length = r.be_i16()?;
        out.push(
            std::str::from_utf8(r.raw(length as usize)?)
                .ok()?
                .to_owned(),
        );
    }
    Some(out)
}

pub fn decode_metadata(data: &[u8]) -> Option<Metadata<'_>> {
    if data.len() > MAX_MEMBER_METADATA_BYTES {
        return None;
    }
    let mut r = Reader {
        buf: data,
        pos: 0,
        end: data.len(),
    };
    let version = r.be_i16()?;
    if version < 0 {
        return None;
    }
    let n_topics = r.be_i32()?;
    let start = r.pos;
    if n_topics > 0 {
        if (n_topics as usize) * 2 > r.remaining() {
            return None;
        }
        for _ in 0..n_topics {
            let length = r.be_i16()?;
            if length <= 0 {
                return None;
            }
            r.raw(length as usize)?;
        }
    } else if n_topics < -1 {
        return None;
    }
    let topic_block = &data[start..r.pos];
    let mut user_data: &[u8] = &[];
    if r.remaining() > 0 {
        let length = r.be_i32()?;
        if length > 0 {
            user_data = r.raw(length as usize)?;
        } else if length < -1 {
            return None;
        }
    }
    let adv = decode_advertisement(user_data)?;
    Some(Metadata {
        version,
        topic_block,
        n_topics: n_topics.max(0) as usize,
        adv,
    })
}

pub fn decode_advertisement(data: &[u8]) -> Option<Advertisement> {
    if data.len() > MAX_ENCODED_BYTES || data.len() < 4 || &data[..2] != b"CG" || data[2] != 1 {
        return None;
    }
    let mut reader = Reader {
        buf: data,
        pos: 4,
        end: data.len(),
    };
    let mut values: [Option<Reader<'_>>; 11] = Default::default();
    while reader.remaining() > 0 {
        let tag = reader.uvarint(INT63_MAX)?;
        let length = reader.uvarint(INT63_MAX)?;
        if length > reader.remaining() as u128 {
            return None;
        }
        let payload = reader.window(length as usize)?;
        if (1..=8).contains(&tag) || tag == 10 {
            let slot = &mut values[tag as usize];
            if slot.is_some() {
                return None;
            }
            *slot = Some(payload);
        }
    }
    let max_partitions = values[1].as_mut()?.uvarint(INT32_MAX)? as u64;
    let budget = values[2].as_mut()?.uvarint(INT63_MAX)? as u64;
    let mut default_cost = 0u64;
    if let Some(v) = values[3].as_mut() {
        default_cost = v.uvarint(INT63_MAX)? as u64;
    }
    let mut weight = 1.0f64;
    if let Some(v) = values[4].as_mut() {
        weight = f64::from_be_bytes(v.raw(8)?.try_into().ok()?);
        if !(weight.is_finite() && weight > 0.0) {
            return None;
        }
    }
    let mut rack = None;
    if let Some(v) = values[5].as_mut() {
        let raw = v.raw(v.remaining())?;
        if raw.len() > MAX_NAME_BYTES as usize {
            return None;
        }
        rack = Some(std::str::from_utf8(raw).ok()?.to_owned());
    }
    let mut draining = false;
    if let Some(v) = values[6].as_mut() {
        draining = v.uvarint(INT63_MAX)? & 1 == 1;
    }
    let mut partition_bytes: Vec<(String, u64)> = Vec::new();
    if let Some(v) = values[7].as_mut() {
        let n = v.count(3, MAX_ENCODED_BYTES as u128)?;
        for _ in 0..n {
            let topic = v.name()?;
            if partition_bytes.iter().any(|(t, _)| t == topic) {
                return None;
            }
            let cost = v.uvarint(INT63_MAX)? as u64;
            partition_bytes.push((topic.to_owned(), cost));
        }
    }
    let mut owned = None;
    if let Some(v) = values[8].as_mut() {
        owned = Some(decode_owned(v)?);
    }
    let mut relay_cost = 0u64;
    if let Some(v) = values[10].as_mut() {
        relay_cost = v.uvarint(INT63_MAX)? as u64;
    }
    Some(Advertisement {
        max_partitions,
        budget,
        default_cost,
        weight,
        rack,
        draining,
        partition_bytes,
        relay_cost,
        owned,
    })
}

fn decode_owned(r: &mut Reader<'_>) -> Option<Owned> {
    let n_gen = r.count(1, MAX_ENCODED_BYTES as u128)?;
    let mut generations: Vec<i64> = Vec::with_capacity(n_gen);
    for _ in 0..n_gen {
        let g = r.svarint(-1, INT32_MAX as i128)? as i64;
        if let Some(&last) = generations.last() {
            if last >= g {
                return None;
            }
        }
        generations.push(g);
    }
    let n_topics = r.count(4, MAX_ENCODED_BYTES as u128)?;
    // Every claim takes at least a byte: the rest of the data bounds the columns, which are
    // allocated once and trimmed at the end (growing them claim by claim cost more than
    // decoding).
    let bound = r.remaining();
    let mut out = Owned {
        names: String::with_capacity(bound),
        name_ends: Vec::with_capacity(n_topics),
        counts: Vec::with_capacity(n_topics),
        partitions: Vec::with_capacity(bound),
        generations: Vec::with_capacity(bound),
        rates: Vec::with_capacity(bound),
    };
    let mut names: Vec<&str> = Vec::with_capacity(n_topics);
    for _ in 0..n_topics {
        let topic = r.name()?;
        names.push(topic);
        let per_entry = if n_gen > 1 { 2 } else { 1 };
        let n = r.count(per_entry, MAX_ENCODED_BYTES as u128)?;
        if n > 0 && n_gen == 0 {
            return None;
        }
        let has_rates = r.u8()? & 1 == 1;
        let mut prev: i128 = -1;
        let first = out.partitions.len();
        for _ in 0..n {
            let partition = prev + 1 + r.uvarint(INT32_MAX)? as i128;
            if partition > INT32_MAX as i128 {
                return None;
            }
            let mut gen = 0usize;
            if n_gen > 1 {
                gen = r.uvarint((n_gen - 1) as u128)? as usize;
            }
            out.partitions.push(partition as i64);
            out.generations.push(generations[gen]);
            prev = partition;
        }
        if has_rates {
            if r.remaining() < 4 * n {
                return None;
            }
            for _ in 0..n {
                let rate = f32::from_be_bytes(r.raw(4)?.try_into().ok()?) as f64;
                if !(rate.is_finite() && rate >= 0.0) {
                    return None;
                }
                out.rates.push(rate);
            }
        } else {
            out.rates.extend(std::iter::repeat_n(0.0, n));
        }
        debug_assert_eq!(out.partitions.len() - first, n);
        out.names.push_str(topic);
        out.name_ends.push(out.names.len());
        out.counts.push(n as i64);
    }
    if r.remaining() > 0 {
        return None;
    }
    // A topic listed twice is refused (checked once, sorted: a member of a group with rates
    // owns partitions of a hundred topics or more). Members list them in ascending order,
    // which shows there is none in one pass.
    if !names.windows(2).all(|w| w[0] < w[1]) {
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return None;
        }
    }
    // Trimmed where the bound was loose (claims with rates take five bytes or more each):
    // the columns live until the plan is made.
    out.names.shrink_to_fit();
    if out.partitions.capacity() > 2 * out.partitions.len() {
        out.partitions.shrink_to_fit();
        out.generations.shrink_to_fit();
        out.rates.shrink_to_fit();
    }
    Some(out)
}

//! The compact binary encoding of what the views keep per space count and per subject on
//! disk (`v/c/`, `v/s/`): LEB128 integers, dates as days, counts as a bit mask of the kinds
//! given followed by their values. Several hundred thousand subjects and millions of
//! snapshots are stored this way, so every byte counts; the ledger items, a few per unit,
//! stay JSON.
//!
//! Decoding is strict: a value that is short, has bytes left over or holds an impossible
//! field is [`Damaged`], which the views report as a damaged store value with its key.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use spacesync_shared::SourceId;
use spacesync_shared::record::{Population, SpaceCounts, SpaceKind};

/// A stored value that does not decode: what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Damaged(pub(crate) &'static str);

/// Bytes being written.
#[derive(Default)]
pub(crate) struct Out(Vec<u8>);

impl Out {
    pub(crate) fn new() -> Out {
        Out(Vec::with_capacity(64))
    }

    /// Writing on after the bytes of `v`.
    pub(crate) fn onto(v: Vec<u8>) -> Out {
        Out(v)
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub(crate) fn uint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A signed integer, zig-zag encoded.
    pub(crate) fn int(&mut self, v: i64) {
        self.uint(((v << 1) ^ (v >> 63)) as u64);
    }

    pub(crate) fn date(&mut self, d: NaiveDate) {
        self.int(i64::from(d.num_days_from_ce()));
    }

    pub(crate) fn time(&mut self, t: DateTime<Utc>) {
        self.int(t.timestamp());
        self.uint(u64::from(t.timestamp_subsec_nanos()));
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    /// Bytes, their length first.
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.uint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    pub(crate) fn source(&mut self, s: &SourceId) {
        self.str(s.as_str());
    }

    /// The kinds given as a bit mask, then their values in kind order.
    pub(crate) fn counts(&mut self, c: &SpaceCounts) {
        let mask = SpaceKind::ALL
            .iter()
            .filter(|k| c.get(**k).is_some())
            .fold(0u8, |m, k| m | 1 << k.index());
        self.u8(mask);
        for (_, v) in c.iter() {
            self.uint(v);
        }
    }

    pub(crate) fn population(&mut self, p: &Population) {
        let fields = [p.teachers, p.students, p.schools];
        let mask = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.is_some())
            .fold(0u8, |m, (i, _)| m | 1 << i);
        self.u8(mask);
        for v in fields.into_iter().flatten() {
            self.uint(v);
        }
    }
}

/// Bytes being read.
pub(crate) struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    pub(crate) fn new(b: &'a [u8]) -> In<'a> {
        In(b)
    }

    /// True when everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks that everything was read.
    pub(crate) fn end(&self) -> Result<(), Damaged> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Damaged("bytes left over after the value"))
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Damaged> {
        let (&b, rest) = self.0.split_first().ok_or(Damaged("value cut short"))?;
        self.0 = rest;
        Ok(b)
    }

    pub(crate) fn uint(&mut self) -> Result<u64, Damaged> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(Damaged("integer too large"));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Damaged("integer too long"))
    }

    pub(crate) fn int(&mut self) -> Result<i64, Damaged> {
        let u = self.uint()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Damaged> {
        u32::try_from(self.uint()?).map_err(|_| Damaged("count too large"))
    }

    pub(crate) fn flag(&mut self) -> Result<bool, Damaged> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Damaged("a flag byte is neither 0 nor 1")),
        }
    }

    pub(crate) fn date(&mut self) -> Result<NaiveDate, Damaged> {
        i32::try_from(self.int()?)
            .ok()
            .and_then(NaiveDate::from_num_days_from_ce_opt)
            .ok_or(Damaged("date out of range"))
    }

    pub(crate) fn time(&mut self) -> Result<DateTime<Utc>, Damaged> {
        let secs = self.int()?;
        let nanos = u32::try_from(self.uint()?).map_err(|_| Damaged("time out of range"))?;
        DateTime::from_timestamp(secs, nanos).ok_or(Damaged("time out of range"))
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, Damaged> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Damaged("text is not UTF-8"))
    }

    /// Bytes written by [`Out::bytes`].
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], Damaged> {
        let n = usize::try_from(self.uint()?).map_err(|_| Damaged("value cut short"))?;
        if n > self.0.len() {
            return Err(Damaged("value cut short"));
        }
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(b)
    }

    pub(crate) fn source(&mut self) -> Result<SourceId, Damaged> {
        SourceId::parse(self.str()?).map_err(|_| Damaged("not a source id"))
    }

    pub(crate) fn counts(&mut self) -> Result<SpaceCounts, Damaged> {
        let mask = self.u8()?;
        let mut c = SpaceCounts::default();
        for k in SpaceKind::ALL {
            if mask & 1 << k.index() != 0 {
                c.set(k, Some(self.uint()?));
            }
        }
        Ok(c)
    }

    pub(crate) fn population(&mut self) -> Result<Population, Damaged> {
        let mask = self.u8()?;
        if mask > 0b111 {
            return Err(Damaged("population fields beyond the three known"));
        }
        let mut field = |i: u8| -> Result<Option<u64>, Damaged> {
            if mask & 1 << i != 0 {
                self.uint().map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(Population {
            teachers: field(0)?,
            students: field(1)?,
            schools: field(2)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_dates_and_times_round_trip() {
        let mut o = Out::new();
        let uints = [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        let ints = [0, -1, 1, i64::MIN, i64::MAX];
        for v in uints {
            o.uint(v);
        }
        for v in ints {
            o.int(v);
        }
        let d = NaiveDate::from_ymd_opt(2018, 10, 1).unwrap_or_default();
        let t = DateTime::from_timestamp(1_542_679_200, 123_456_789).unwrap_or_default();
        o.date(d);
        o.time(t);
        o.str("gd-a");
        let b = o.into_bytes();
        let mut i = In::new(&b);
        for v in uints {
            assert_eq!(i.uint(), Ok(v));
        }
        for v in ints {
            assert_eq!(i.int(), Ok(v));
        }
        assert_eq!(i.date(), Ok(d));
        assert_eq!(i.time(), Ok(t));
        assert_eq!(i.str(), Ok("gd-a"));
        assert_eq!(i.end(), Ok(()));
        // Every shorter prefix is refused, not misread.
        for n in 0..b.len() {
            let mut i = In::new(&b[..n]);
            let whole = uints.iter().all(|_| i.uint().is_ok())
                && ints.iter().all(|_| i.int().is_ok())
                && i.date().is_ok()
                && i.time().is_ok()
                && i.str().is_ok();
            assert!(!whole, "a prefix of {n} bytes read as the whole");
        }
        let eleven = [0xffu8; 11];
        assert!(In::new(&eleven).uint().is_err());
    }
}

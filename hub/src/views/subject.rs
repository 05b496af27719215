//! A subject of the views — a region's own total, or a school — and its 13 bytes in keys
//! (`v/s/`) and in the views checkpoint.

use spacesync_shared::RegionCode;
use spacesync_shared::region::SchoolCode;

use super::codec::Damaged;

/// Subject of a space count: a region's own total, or a school.
pub(super) type Subject = (RegionCode, Option<SchoolCode>);

/// Bytes of a subject in a key: region, whether a school, school.
pub(super) const SUBJECT_LEN: usize = 4 + 1 + 8;

/// `prefix`, then the subject's bytes.
pub(super) fn subject_key(prefix: &[u8], (region, school): Subject) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + SUBJECT_LEN + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&region.as_u32().to_be_bytes());
    k.push(u8::from(school.is_some()));
    k.extend_from_slice(&school.map_or(0, SchoolCode::as_u64).to_be_bytes());
    k
}

/// A subject from its parts as stored.
pub(super) fn subject_from(region: u32, school: Option<u64>) -> Result<Subject, Damaged> {
    let region = RegionCode::from_u32(region).map_err(|_| Damaged("not a region code"))?;
    let school = school
        .map(|s| SchoolCode::from_u64(s).map_err(|_| Damaged("not a school code")))
        .transpose()?;
    Ok((region, school))
}

/// The subject of exactly `SUBJECT_LEN` bytes.
pub(super) fn parse_subject(b: &[u8]) -> Result<Subject, Damaged> {
    let b: &[u8; SUBJECT_LEN] = b.try_into().map_err(|_| Damaged("not a subject's key"))?;
    let region = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut school = [0u8; 8];
    school.copy_from_slice(&b[5..13]);
    let school = match b[4] {
        0 => None,
        1 => Some(u64::from_be_bytes(school)),
        _ => return Err(Damaged("neither a region's own total nor a school")),
    };
    subject_from(region, school)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_reads_back_from_its_bytes() {
        let region = RegionCode::parse("110105").expect("region");
        let school = SchoolCode::parse("1101050001").expect("school");
        for s in [(region, None), (region, Some(school))] {
            let k = subject_key(b"", s);
            assert_eq!(k.len(), SUBJECT_LEN);
            assert_eq!(parse_subject(&k).ok(), Some(s));
        }
        let mut k = subject_key(b"", (region, None));
        k[4] = 2;
        assert!(parse_subject(&k).is_err());
        assert!(parse_subject(&k[..12]).is_err());
    }
}

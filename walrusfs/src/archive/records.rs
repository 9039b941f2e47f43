//! Published index records: index entries ([`RecordEntry`]) sealed into blobs.
//!
//! A record (full, or the changes since the previous one) is cut into parts of about
//! [`PART_BYTES`], each sealed on its own and stored as one blob, so neither writing nor reading
//! one needs the whole record in one buffer, and a restore fetches parts in parallel.
//!
//! # Part format (version 1; a contract, pinned by a test)
//!
//! Blob = `nonce (24) ++ XChaCha20-Poly1305(plain)`, where `plain` is `u32 LE length ++
//! postcard(Part) ++ zero padding` to a multiple of [`PAD`] bytes, so a blob's length says only
//! roughly how big the record is: no names, sizes or tree shape. The associated data binds the
//! archive, the filesystem id, the record's sequence number, whether it is full and the part's
//! number: parts cannot be swapped between records, reordered or replayed into another archive.
//! A record's last part says so, so a truncated list of parts is detected.

use netcore::identity::PublicKey;
use serde::{Deserialize, Serialize};

use super::key::IndexKey;
use super::ArchiveError;
use crate::index::RecordEntry;

/// Current part format.
pub const RECORD_FORMAT: u16 = 1;
/// Sealed plaintexts are padded to a multiple of this.
pub const PAD: usize = 4096;
/// Plaintext bytes aimed for per part: a few MiB keeps blobs in the range the network stores
/// efficiently and bounds the memory a part costs.
pub const PART_BYTES: usize = 4 << 20;
const RECORD_AD: &[u8] = b"walrusfs index record v1\0";

/// One part of a record, as sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    format: u16,
    fs_id: [u8; 16],
    upto_seq: u64,
    full: bool,
    part: u32,
    last: bool,
    entries: Vec<RecordEntry>,
}

/// What identifies a record: bound into every part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordId {
    /// The archive.
    pub archive: PublicKey,
    /// The filesystem the index belongs to.
    pub fs_id: [u8; 16],
    /// The sequence number the record is current at.
    pub upto_seq: u64,
    /// Full record or changes.
    pub full: bool,
}

fn ad(id: &RecordId, part: u32) -> Vec<u8> {
    let mut a = RECORD_AD.to_vec();
    a.extend_from_slice(&id.archive.0);
    a.extend_from_slice(&id.fs_id);
    a.extend_from_slice(&id.upto_seq.to_le_bytes());
    a.push(u8::from(id.full));
    a.extend_from_slice(&part.to_le_bytes());
    a
}

/// Rough encoded size of an entry, to cut parts.
fn entry_size(e: &RecordEntry) -> usize {
    e.key.len() + e.value.as_ref().map_or(0, Vec::len) + 8
}

/// Cuts `entries` into parts and seals each; at least one part (possibly empty).
pub fn seal_parts(key: &IndexKey, id: &RecordId, entries: &[RecordEntry]) -> Vec<Vec<u8>> {
    let mut groups: Vec<&[RecordEntry]> = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, e) in entries.iter().enumerate() {
        if size > 0 && size + entry_size(e) > PART_BYTES {
            groups.push(&entries[start..i]);
            start = i;
            size = 0;
        }
        size += entry_size(e);
    }
    groups.push(&entries[start..]);
    let count = groups.len();
    groups
        .into_iter()
        .enumerate()
        .map(|(i, group)| {
            let part = Part {
                format: RECORD_FORMAT,
                fs_id: id.fs_id,
                upto_seq: id.upto_seq,
                full: id.full,
                part: i as u32,
                last: i + 1 == count,
                entries: group.to_vec(),
            };
            // Encoding plain data into a Vec cannot fail.
            let body = postcard::to_stdvec(&part).unwrap_or_default();
            let padded_len = (4 + body.len()).div_ceil(PAD) * PAD;
            let mut plain = Vec::with_capacity(padded_len);
            plain.extend_from_slice(&(body.len() as u32).to_le_bytes());
            plain.extend_from_slice(&body);
            plain.resize(padded_len, 0);
            key.seal(&ad(id, i as u32), &plain)
        })
        .collect()
}

/// Opens part `part` of record `id`; returns its entries and whether it is the last part.
pub fn open_part(
    key: &IndexKey,
    id: &RecordId,
    part: u32,
    sealed: &[u8],
) -> Result<(Vec<RecordEntry>, bool), ArchiveError> {
    let bad = |reason: String| ArchiveError::IndexRecord {
        upto_seq: id.upto_seq,
        part,
        reason,
    };
    let plain = key.open(&ad(id, part), sealed).map_err(|_| {
        bad("failed authentication (altered, misplaced, or another archive's)".into())
    })?;
    let len = plain
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad("too short".into()))?;
    let body = plain
        .get(4..4 + len)
        .ok_or_else(|| bad("length beyond the part".into()))?;
    let p: Part = postcard::from_bytes(body).map_err(|e| bad(format!("undecodable: {e}")))?;
    if p.format != RECORD_FORMAT {
        return Err(bad(format!(
            "format {}, this build reads {RECORD_FORMAT}",
            p.format
        )));
    }
    if p.fs_id != id.fs_id || p.upto_seq != id.upto_seq || p.full != id.full || p.part != part {
        return Err(bad("header does not match the root record".into()));
    }
    Ok((p.entries, p.last))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::index::TreeId;

    fn id() -> RecordId {
        RecordId {
            archive: PublicKey([1; 32]),
            fs_id: [2; 16],
            upto_seq: 42,
            full: true,
        }
    }

    fn entries(n: usize, value_len: usize) -> Vec<RecordEntry> {
        (0..n)
            .map(|i| RecordEntry {
                tree: TreeId::Inodes,
                key: (i as u64).to_be_bytes().to_vec(),
                value: (i % 3 != 0).then(|| vec![i as u8; value_len]),
            })
            .collect()
    }

    #[test]
    fn parts_round_trip_and_are_padded() {
        let key = IndexKey::from_bytes([7; 32]);
        let es = entries(10, 100);
        let parts = seal_parts(&key, &id(), &es);
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].len() - 40) % PAD, 0, "padded");
        let (back, last) = open_part(&key, &id(), 0, &parts[0]).unwrap();
        assert!(last);
        assert_eq!(back, es);
    }

    #[test]
    fn big_records_split_and_parts_cannot_be_swapped() {
        let key = IndexKey::from_bytes([7; 32]);
        let es = entries(5000, 4000);
        let parts = seal_parts(&key, &id(), &es);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut all = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let (mut e, last) = open_part(&key, &id(), i as u32, p).unwrap();
            assert_eq!(last, i + 1 == parts.len());
            all.append(&mut e);
        }
        assert_eq!(all, es);
        assert!(open_part(&key, &id(), 1, &parts[0]).is_err(), "reordered");
        let other = RecordId {
            upto_seq: 43,
            ..id()
        };
        assert!(
            open_part(&key, &other, 0, &parts[0]).is_err(),
            "other record"
        );
        let delta = RecordId {
            full: false,
            ..id()
        };
        assert!(open_part(&key, &delta, 0, &parts[0]).is_err());
        assert!(open_part(&IndexKey::from_bytes([8; 32]), &id(), 0, &parts[0]).is_err());
        assert!(open_part(&key, &id(), 0, &parts[0][..100]).is_err());
    }

    #[test]
    fn an_empty_record_is_one_empty_part() {
        let key = IndexKey::from_bytes([7; 32]);
        let parts = seal_parts(&key, &id(), &[]);
        assert_eq!(parts.len(), 1);
        assert_eq!(
            open_part(&key, &id(), 0, &parts[0]).unwrap(),
            (vec![], true)
        );
    }

    /// The part format is a contract: a fixed part encodes to fixed bytes.
    #[test]
    fn part_format_is_pinned() {
        let p = Part {
            format: 1,
            fs_id: [2; 16],
            upto_seq: 3,
            full: true,
            part: 0,
            last: true,
            entries: vec![RecordEntry {
                tree: TreeId::Dirents,
                key: vec![9],
                value: None,
            }],
        };
        let bytes = postcard::to_stdvec(&p).unwrap();
        let mut expected = vec![1u8];
        expected.extend_from_slice(&[2; 16]);
        expected.extend_from_slice(&[3, 1, 0, 1]); // seq, full, part, last
        expected.extend_from_slice(&[1, 1, 1, 9, 0]); // one entry: tree 1, key [9], no value
        assert_eq!(bytes, expected);
    }
}

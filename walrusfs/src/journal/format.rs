//! The journal's on-disk format: segment headers and records. A contract (pinned by tests):
//! a state directory written by one version is replayed by the next.
//!
//! ```text
//! segment  = magic "WFSJRN01" (8) ++ segment number (u64 LE) ++ record*
//! record   = body_len (u32 LE) ++ header_len (u32 LE) ++ checksum (8) ++ header ++ body
//! checksum = first 8 bytes of blake3(body_len ++ header_len ++ header ++ body)
//! header   = postcard(EntryHeader) ++ [postcard(RecordAttrs)]
//! body     = a sealed chunk (see `crate::data::crypto`): ciphertext only
//! ```
//!
//! The `RecordAttrs` extension (mode, owner and atime set while the data was buffered, so a
//! replay restores them too) is present only when there are such changes; a header without it
//! is the original format, read as "no changes". (A reader older than the extension decodes the
//! header and ignores it: it would replay the data without those changes.)
//!
//! A record whose checksum does not match, or that runs past the end of its segment, is a
//! write the crash interrupted: it and everything after it in the segment are cut off at replay.

use serde::{Deserialize, Serialize};

use crate::index::Timestamp;

/// Segment magic; the last two bytes are the format version.
pub const MAGIC: [u8; 8] = *b"WFSJRN01";
/// Bytes of a segment header.
pub const SEGMENT_HEADER: usize = 16;
/// Bytes in front of each record's header.
pub const RECORD_PREFIX: usize = 16;
/// Largest header accepted (a few varints and a salt; anything bigger is damage).
pub const MAX_HEADER: usize = 256;

/// What a record says about the sealed chunk it carries: enough to seal-check it, put it in
/// its file, and (at replay) redo the index change that followed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryHeader {
    /// The record's sequence number (strictly increasing across the journal).
    pub seq: u64,
    /// The file.
    pub ino: u64,
    /// The chunk index in the file.
    pub chunk: u64,
    /// The chunk version it was sealed under.
    pub version: u64,
    /// The salt it was sealed with.
    pub salt: [u8; 16],
    /// Plaintext bytes sealed.
    pub stored_len: u32,
    /// The file's size when the record was written.
    pub size: u64,
    /// The file's mtime then.
    pub mtime: Timestamp,
    /// The file's ctime then.
    pub ctime: Timestamp,
}

/// Attribute changes a record carries besides size and times: mode, owner and atime set while
/// its data was buffered (see `index::SetAttr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordAttrs {
    /// New permission bits.
    pub perm: Option<u16>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New access time.
    pub atime: Option<Timestamp>,
}

/// Decodes a record header: the entry header and, if present, its attribute extension. None
/// if it is damaged.
pub fn decode_header(bytes: &[u8]) -> Option<(EntryHeader, Option<RecordAttrs>)> {
    let (h, rest) = postcard::take_from_bytes::<EntryHeader>(bytes).ok()?;
    if rest.is_empty() {
        return Some((h, None));
    }
    let (attrs, rest) = postcard::take_from_bytes::<RecordAttrs>(rest).ok()?;
    rest.is_empty().then_some((h, Some(attrs)))
}

/// A record's checksum.
pub fn checksum(body_len: u32, header: &[u8], body: &[u8]) -> [u8; 8] {
    let mut h = blake3::Hasher::new();
    h.update(&body_len.to_le_bytes());
    h.update(&(header.len() as u32).to_le_bytes());
    h.update(header);
    h.update(body);
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

/// The bytes of a record.
pub fn encode_record(header: &EntryHeader, attrs: Option<&RecordAttrs>, body: &[u8]) -> Vec<u8> {
    // Encoding a plain struct cannot fail.
    let mut h = postcard::to_stdvec(header).unwrap_or_default();
    if let Some(a) = attrs {
        h.extend(postcard::to_stdvec(a).unwrap_or_default());
    }
    let mut out = Vec::with_capacity(RECORD_PREFIX + h.len() + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(body.len() as u32, &h, body));
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out
}

/// A segment's header.
pub fn segment_header(number: u64) -> [u8; SEGMENT_HEADER] {
    let mut out = [0u8; SEGMENT_HEADER];
    out[..8].copy_from_slice(&MAGIC);
    out[8..].copy_from_slice(&number.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn record_format_is_pinned() {
        let h = EntryHeader {
            seq: 1,
            ino: 2,
            chunk: 3,
            version: 4,
            salt: [5; 16],
            stored_len: 6,
            size: 7,
            mtime: Timestamp { secs: 8, nanos: 9 },
            ctime: Timestamp {
                secs: 10,
                nanos: 11,
            },
        };
        let rec = encode_record(&h, None, b"body");
        let mut header = vec![1u8, 2, 3, 4];
        header.extend_from_slice(&[5; 16]);
        header.extend_from_slice(&[6, 7, 16, 9, 20, 11]); // varints; secs zigzag
        assert_eq!(&rec[..4], &4u32.to_le_bytes());
        assert_eq!(&rec[4..8], &(header.len() as u32).to_le_bytes());
        assert_eq!(&rec[8..16], &checksum(4, &header, b"body"));
        assert_eq!(&rec[16..16 + header.len()], &header[..]);
        assert_eq!(&rec[16 + header.len()..], b"body");
        assert_eq!(&segment_header(3)[..], b"WFSJRN01\x03\0\0\0\0\0\0\0");
        assert_eq!(decode_header(&header), Some((h, None)), "no extension");

        let attrs = RecordAttrs {
            perm: Some(0o600),
            uid: None,
            gid: Some(7),
            atime: Some(Timestamp { secs: 1, nanos: 2 }),
        };
        let rec = encode_record(&h, Some(&attrs), b"");
        let mut with = header.clone();
        // Option tags, then varints (0o600 = 384 = 0x80 0x03).
        with.extend_from_slice(&[1, 0x80, 0x03, 0, 1, 7, 1, 2, 2]);
        assert_eq!(&rec[16..], &with[..]);
        assert_eq!(decode_header(&with), Some((h, Some(attrs))));
        with.push(0);
        assert_eq!(decode_header(&with), None, "trailing bytes are damage");
    }
}

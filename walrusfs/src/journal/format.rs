//! The journal's on-disk format: segment headers and records. A contract (pinned by tests):
//! a state directory written by one version is replayed by the next.
//!
//! ```text
//! segment  = magic "WFSJRN02" (8) ++ segment number (u64 LE) ++ first seq (u64 LE) ++ record*
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
//! A **creation record** (`stored_len` = [`CREATION`], no sealed chunk is that long) carries
//! no chunk: its body is `postcard(Creation)`, the creation of regular file `ino` (parent,
//! name, mode, owner, time), written before the file's first data record when the index's own
//! record of that creation may not yet be in the kernel (see `Index::creation_guard`). A
//! replay creates the file from it if the index lacks it. Such a body is not secret: names,
//! modes and owners are in the local index too. (A reader older than creation records skips
//! them, as their body length never matches a sealed chunk's: it would replay the data of a
//! file whose creation the index lost into nothing, i.e. lose that file, and nothing else.)
//!
//! A record whose checksum does not match, or that runs past the end of its segment, is a
//! write the crash interrupted: it and everything after it in the segment are cut off at replay.
//!
//! A segment file whose records are all dead is reused for a later segment (its pages are then
//! still in the kernel's cache: writing into them is cheap, where fresh pages cost this VM more
//! kernel time than the rest of the write): its header is rewritten and new records overwrite
//! the old ones from the start. Records left over from its earlier use follow the new ones, with
//! valid checksums, so a record whose sequence number is below the header's first seq, or not
//! above the record before it, ends the segment too. Format 1 (magic "WFSJRN01", no first seq;
//! segments were never reused) is still replayed.

use serde::{Deserialize, Serialize};

use crate::index::{Timestamp, NAME_MAX};

/// Segment magic; the last two bytes are the format version.
pub const MAGIC: [u8; 8] = *b"WFSJRN02";
/// Segment magic of format 1 (segments never reused; replayed, never written).
pub const MAGIC_V1: [u8; 8] = *b"WFSJRN01";
/// Bytes of a segment header.
pub const SEGMENT_HEADER: usize = 24;
/// Bytes of a format-1 segment header.
pub const SEGMENT_HEADER_V1: usize = 16;
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

/// `EntryHeader::stored_len` of a creation record.
pub const CREATION: u32 = u32::MAX;

/// Largest creation body accepted (a 255-byte name and a few varints; anything bigger is
/// damage).
pub const MAX_CREATION: usize = 512;

/// The body of a creation record: regular file `EntryHeader::ino` was created as `name` in
/// directory `parent`, with these mode bits and owner, at `time` (its atime, mtime, ctime and
/// crtime).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creation {
    /// The directory it was created in.
    pub parent: u64,
    /// Its name there.
    pub name: Vec<u8>,
    /// Permission bits.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// When.
    pub time: Timestamp,
}

impl Creation {
    /// The header of the creation record of file `ino` (its `seq` is assigned at append).
    pub fn header(&self, ino: u64) -> EntryHeader {
        EntryHeader {
            seq: 0,
            ino,
            chunk: 0,
            version: 0,
            salt: [0; 16],
            stored_len: CREATION,
            size: 0,
            mtime: self.time,
            ctime: self.time,
        }
    }

    /// Its body.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a plain struct cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a body; None if it is damaged.
    pub fn decode(body: &[u8]) -> Option<Creation> {
        if body.len() > MAX_CREATION {
            return None;
        }
        let c: Creation = postcard::from_bytes(body).ok()?;
        (!c.name.is_empty() && c.name.len() <= NAME_MAX).then_some(c)
    }
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
#[cfg(test)]
pub fn encode_record(header: &EntryHeader, attrs: Option<&RecordAttrs>, body: &[u8]) -> Vec<u8> {
    let mut out = record_prefix(header, attrs, body);
    out.extend_from_slice(body);
    out
}

/// The bytes of a record before its body (lengths, checksum, header): the record is these
/// followed by `body`, written together without copying the body into one buffer.
pub fn record_prefix(header: &EntryHeader, attrs: Option<&RecordAttrs>, body: &[u8]) -> Vec<u8> {
    // Encoding a plain struct cannot fail.
    let mut h = postcard::to_stdvec(header).unwrap_or_default();
    if let Some(a) = attrs {
        h.extend(postcard::to_stdvec(a).unwrap_or_default());
    }
    let mut out = Vec::with_capacity(RECORD_PREFIX + h.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(body.len() as u32, &h, body));
    out.extend_from_slice(&h);
    out
}

/// The header of segment `number`, whose records have sequence numbers from `first_seq` on.
pub fn segment_header(number: u64, first_seq: u64) -> [u8; SEGMENT_HEADER] {
    let mut out = [0u8; SEGMENT_HEADER];
    out[..8].copy_from_slice(&MAGIC);
    out[8..16].copy_from_slice(&number.to_le_bytes());
    out[16..].copy_from_slice(&first_seq.to_le_bytes());
    out
}

/// Parses the start of segment `number`: its header's length and the lowest sequence number
/// its records may have (0 in format 1). None if `head` (at least [`SEGMENT_HEADER`] bytes, or
/// all the file has) is not a header of that segment.
pub fn parse_segment_header(head: &[u8], number: u64) -> Option<(usize, u64)> {
    let magic = head.get(..8)?;
    if head.get(8..16)? != number.to_le_bytes() {
        return None;
    }
    if magic == MAGIC {
        let first = u64::from_le_bytes(head.get(16..24)?.try_into().ok()?);
        Some((SEGMENT_HEADER, first))
    } else if magic == MAGIC_V1 {
        Some((SEGMENT_HEADER_V1, 0))
    } else {
        None
    }
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
        assert_eq!(
            &segment_header(3, 9)[..],
            b"WFSJRN02\x03\0\0\0\0\0\0\0\x09\0\0\0\0\0\0\0"
        );
        assert_eq!(
            parse_segment_header(&segment_header(3, 9), 3),
            Some((SEGMENT_HEADER, 9))
        );
        assert_eq!(parse_segment_header(&segment_header(3, 9), 4), None);
        let v1 = b"WFSJRN01\x03\0\0\0\0\0\0\0";
        assert_eq!(parse_segment_header(v1, 3), Some((SEGMENT_HEADER_V1, 0)));
        assert_eq!(parse_segment_header(b"WFSJRN03\x03\0\0\0\0\0\0\0", 3), None);
        assert_eq!(parse_segment_header(b"WFSJRN02\x03", 3), None, "cut short");
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

        let c = Creation {
            parent: 1,
            name: b"f".to_vec(),
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            time: Timestamp { secs: 3, nanos: 4 },
        };
        // Varints: parent, name length and bytes, 0o644 = 420 = 0xa4 0x03, 1000 = 0xe8 0x07,
        // secs zigzag, nanos.
        let body = [1, 1, b'f', 0xa4, 0x03, 0xe8, 0x07, 0xe8, 0x07, 6, 4];
        assert_eq!(c.encode(), body);
        assert_eq!(Creation::decode(&body), Some(c.clone()));
        assert_eq!(Creation::decode(&body[..5]), None, "cut short");
        assert_eq!(c.header(9).stored_len, u32::MAX);
        assert!(
            crate::data::crypto::Segments::SMALLEST.sealed_len(CREATION as usize) > MAX_CREATION,
            "a creation body never has the length a chunk record's header announces"
        );
    }
}

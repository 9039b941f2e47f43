//! Publishing the index as records: a replica built from a full capture and the captures of
//! later changes holds exactly the writer's published trees.

use super::crash::{random_op, Rng};
use super::*;

/// Every published key and value of `ix`.
fn published(ix: &Index) -> Vec<RecordEntry> {
    ix.capture_full().unwrap().entries
}

/// An empty replica in its own directory.
fn replica() -> (TempDir, Index) {
    let dir = tempfile::tempdir().unwrap();
    let ix = Index::open_replica(&dir.path().join("index")).unwrap();
    (dir, ix)
}

#[test]
fn full_then_deltas_rebuild_the_same_index() {
    let (_d, writer) = open();
    let mut rng = Rng(0x5eed);
    for _ in 0..300 {
        random_op(&writer, &mut rng);
    }
    let full = writer.capture_full().unwrap();
    writer.mark_published(full.upto_seq, b"v1").unwrap();
    assert_eq!(writer.unpublished_changes(), 0);
    assert_eq!(writer.published_seq().unwrap(), full.upto_seq);
    assert_eq!(writer.archive_state().unwrap().as_deref(), Some(&b"v1"[..]));

    let (_r, rep) = replica();
    assert!(!rep.is_initialized());
    rep.apply_entries(&full.entries, true).unwrap();
    assert!(rep.is_initialized());
    assert_eq!(rep.chunk_size(), CS);
    assert_eq!(rep.segments(), writer.segments());
    assert_eq!(published(&rep), published(&writer));
    rep.check().unwrap();

    for round in 0..5 {
        for _ in 0..60 {
            random_op(&writer, &mut rng);
        }
        let delta = writer.capture_changes().unwrap();
        assert!(!delta.entries.is_empty(), "round {round} changed nothing");
        assert!(delta.entries.len() < full.entries.len() + 400);
        writer.mark_published(delta.upto_seq, b"v").unwrap();
        rep.apply_entries(&delta.entries, false).unwrap();
        assert_eq!(published(&rep), published(&writer), "after delta {round}");
        rep.check().unwrap();
        // Applying the same delta twice (a crash part-way through applying) changes nothing.
        rep.apply_entries(&delta.entries, false).unwrap();
        assert_eq!(published(&rep), published(&writer));
    }
    writer.check().unwrap();
}

#[test]
fn a_small_change_makes_a_small_delta() {
    let (_d, ix) = open();
    for i in 0..200 {
        mkfile(&ix, ROOT_INO, &format!("f{i}"));
    }
    let full = ix.capture_full().unwrap();
    ix.mark_published(full.upto_seq, b"").unwrap();
    mkfile(&ix, ROOT_INO, "one more");
    let delta = ix.capture_changes().unwrap();
    // The new inode, its entry and cookie, the parent's times, the counters.
    assert!(delta.entries.len() <= 6, "{:?}", delta.entries);
    assert!(full.entries.len() > 600);
}

#[test]
fn changes_after_a_capture_stay_unpublished() {
    let (_d, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "a");
    let capture = ix.capture_changes().unwrap();
    // A change made while the capture was being published.
    ix.set_xattr(f.ino, b"user.k", b"v", XattrFlags::default(), t(9))
        .unwrap();
    ix.mark_published(capture.upto_seq, b"").unwrap();
    assert_eq!(ix.published_seq().unwrap(), capture.upto_seq);
    let next = ix.capture_changes().unwrap();
    let trees: Vec<TreeId> = next.entries.iter().map(|e| e.tree).collect();
    assert!(trees.contains(&TreeId::Xattrs), "{trees:?}");
    assert!(
        trees.contains(&TreeId::Inodes),
        "the inode's ctime changed too"
    );
    assert!(next.upto_seq > capture.upto_seq);
    ix.check().unwrap();
}

#[test]
fn deletions_are_published() {
    let (_d, ix) = open();
    mkfile(&ix, ROOT_INO, "gone");
    let (_r, rep) = replica();
    let full = ix.capture_full().unwrap();
    ix.mark_published(full.upto_seq, b"").unwrap();
    rep.apply_entries(&full.entries, true).unwrap();
    ix.unlink(ROOT_INO, b"gone", t(5), &closed).unwrap();
    let delta = ix.capture_changes().unwrap();
    assert!(delta
        .entries
        .iter()
        .any(|e| e.tree == TreeId::Dirents && e.value.is_none()));
    rep.apply_entries(&delta.entries, false).unwrap();
    assert_err!(rep.lookup(ROOT_INO, b"gone"), IndexError::NotFound);
    rep.check().unwrap();
}

#[test]
fn records_cannot_touch_local_trees() {
    let (_r, rep) = replica();
    let bad = RecordEntry {
        tree: TreeId::Local,
        key: b"published_seq".to_vec(),
        value: Some(vec![1]),
    };
    assert_err!(rep.apply_entries(&[bad], true), IndexError::Corrupt(_));
}

#[test]
fn marking_many_changes_published_goes_in_batches_and_keeps_later_ones() {
    let (_d, ix) = open();
    let files: Vec<InodeAttr> = (0..800)
        .map(|i| mkfile(&ix, ROOT_INO, &format!("f{i}")))
        .collect();
    let capture = ix.capture_changes().unwrap();
    // Far more stamps than one batch (each file stamps its inode, entry and cookie).
    assert!(ix.unpublished_changes() > 3 * super::super::records::MARK_BATCH);
    // Changes made while the capture was being published: the last file's, and a new one.
    ix.set_xattr(files[799].ino, b"user.k", b"v", XattrFlags::default(), t(9))
        .unwrap();
    mkfile(&ix, ROOT_INO, "late");
    let before = ix.committed();
    ix.mark_published(capture.upto_seq, b"state").unwrap();
    assert!(
        ix.committed() - before > 3,
        "one transaction per batch, and the state's"
    );
    assert_eq!(ix.published_seq().unwrap(), capture.upto_seq);
    assert_eq!(ix.archive_state().unwrap().as_deref(), Some(&b"state"[..]));
    let left = ix.changes_after(0).unwrap();
    assert_eq!(
        left,
        ix.changes_after(capture.upto_seq).unwrap(),
        "only later stamps stay"
    );
    assert_eq!(ix.unpublished_changes(), left);
    let next = ix.capture_changes().unwrap();
    let xattr_key = next
        .entries
        .iter()
        .any(|e| e.tree == TreeId::Xattrs && e.value.as_deref() == Some(&b"v"[..]));
    assert!(xattr_key, "the xattr set meanwhile is still to publish");
    assert!(ix.lookup(ROOT_INO, b"late").is_ok());
    ix.check().unwrap();
}

#[test]
fn a_replica_seals_and_opens_in_the_segments_of_the_index_it_copies() {
    for legacy in [false, true] {
        let (_d, writer) = open();
        if legacy {
            writer.make_format_3();
        }
        let (_r, rep) = replica();
        rep.apply_entries(&writer.capture_full().unwrap().entries, true)
            .unwrap();
        let want = if legacy {
            Segments::LEGACY
        } else {
            Segments::DEFAULT
        };
        assert_eq!(rep.segments(), want, "legacy {legacy}");
    }
}

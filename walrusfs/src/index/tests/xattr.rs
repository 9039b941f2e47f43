//! Extended attributes.

use super::*;

const ANY: XattrFlags = XattrFlags {
    create: false,
    replace: false,
};
const CREATE: XattrFlags = XattrFlags {
    create: true,
    replace: false,
};
const REPLACE: XattrFlags = XattrFlags {
    create: false,
    replace: true,
};

#[test]
fn set_get_list_remove() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    assert!(ix.list_xattrs(f.ino).unwrap().is_empty());
    ix.set_xattr(f.ino, b"user.b", b"2", ANY, t(20)).unwrap();
    ix.set_xattr(f.ino, b"user.a", b"", CREATE, t(21)).unwrap();
    assert_eq!(ix.get_attr(f.ino).unwrap().ctime, t(21));
    assert_eq!(ix.get_xattr(f.ino, b"user.a").unwrap(), b"");
    assert_eq!(ix.get_xattr(f.ino, b"user.b").unwrap(), b"2");
    assert_eq!(
        ix.list_xattrs(f.ino).unwrap(),
        [b"user.a".to_vec(), b"user.b".to_vec()]
    );
    ix.set_xattr(f.ino, b"user.b", b"3", REPLACE, t(22))
        .unwrap();
    assert_eq!(ix.get_xattr(f.ino, b"user.b").unwrap(), b"3");
    ix.remove_xattr(f.ino, b"user.b", t(23)).unwrap();
    assert_eq!(ix.get_attr(f.ino).unwrap().ctime, t(23));
    assert_err!(ix.get_xattr(f.ino, b"user.b"), IndexError::NoData);
    assert_eq!(ix.list_xattrs(f.ino).unwrap(), [b"user.a".to_vec()]);
    // Directories carry xattrs too, and rmdir drops them.
    let d = mkdir(&ix, ROOT_INO, "d");
    ix.set_xattr(d.ino, b"user.d", b"x", ANY, t(1)).unwrap();
    ix.rmdir(ROOT_INO, b"d", t(2)).unwrap();
    ix.check().unwrap();
    assert_eq!(ix.list_xattrs(f.ino).unwrap().len(), 1);
}

#[test]
fn xattr_errors() {
    let (_dir, ix) = open();
    let f = mkfile(&ix, ROOT_INO, "f");
    ix.set_xattr(f.ino, b"user.a", b"1", ANY, t(1)).unwrap();
    assert_err!(
        ix.set_xattr(f.ino, b"user.a", b"2", CREATE, t(2)),
        IndexError::XattrExists
    );
    assert_err!(
        ix.set_xattr(f.ino, b"user.z", b"2", REPLACE, t(2)),
        IndexError::NoData
    );
    assert_eq!(
        ix.get_attr(f.ino).unwrap().ctime,
        t(1),
        "failed sets change nothing"
    );
    assert_err!(ix.remove_xattr(f.ino, b"user.z", t(2)), IndexError::NoData);
    assert_err!(ix.get_xattr(f.ino, b"user.z"), IndexError::NoData);
    assert_err!(ix.get_xattr(999, b"user.a"), IndexError::NotFound);
    assert_err!(
        ix.set_xattr(999, b"user.a", b"", ANY, t(2)),
        IndexError::NotFound
    );
    assert_err!(ix.remove_xattr(999, b"user.a", t(2)), IndexError::NotFound);
    assert_err!(ix.list_xattrs(999), IndexError::NotFound);
    assert_err!(
        ix.set_xattr(f.ino, b"", b"", ANY, t(2)),
        IndexError::InvalidName
    );
    assert_err!(ix.get_xattr(f.ino, b"a\0b"), IndexError::InvalidName);
    let long = vec![b'n'; XATTR_NAME_MAX + 1];
    assert_err!(
        ix.set_xattr(f.ino, &long, b"", ANY, t(2)),
        IndexError::NameTooLong
    );
    let big = vec![0u8; XATTR_VALUE_MAX + 1];
    assert_err!(
        ix.set_xattr(f.ino, b"user.big", &big, ANY, t(2)),
        IndexError::InvalidArgument(_)
    );
    ix.set_xattr(f.ino, b"user.big", &big[1..], ANY, t(2))
        .unwrap();
    ix.check().unwrap();
}

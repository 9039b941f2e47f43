//! Extended attributes: `ino ++ name -> value` in the `xattrs` tree.

use super::error::{IndexError, Result};
use super::layout::{
    ino_key, named_key, parse_named_key, validate_xattr_name, TreeId, XATTR_VALUE_MAX,
};
use super::params::XattrFlags;
use super::scan::Scan;
use super::tx::abort;
use super::types::{Ino, Timestamp};
use super::Index;

impl Index {
    /// The value of xattr `name` of `ino`. Errors: `NotFound` (inode), `NoData`,
    /// `InvalidName`/`NameTooLong`.
    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let _r = self.read_lock();
        validate_xattr_name(name)?;
        if let Some(value) = self.trees.xattrs.get(named_key(ino, name))? {
            return Ok(value.to_vec());
        }
        self.attr_nolock(ino)?;
        Err(IndexError::NoData)
    }

    /// Sets xattr `name` of `ino` to `value`; ctime becomes `now`.
    ///
    /// Errors: `NotFound` (inode), `XattrExists` (`flags.create` and it exists), `NoData`
    /// (`flags.replace` and it does not), `InvalidName`/`NameTooLong`, `InvalidArgument`
    /// (value over [`XATTR_VALUE_MAX`] bytes).
    pub fn set_xattr(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
        now: Timestamp,
    ) -> Result<()> {
        validate_xattr_name(name)?;
        if value.len() > XATTR_VALUE_MAX {
            return Err(IndexError::InvalidArgument("xattr value too large"));
        }
        let key = named_key(ino, name);
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            let mut attr = tx.need_inode(ino)?;
            let exists = tx.get(TreeId::Xattrs, &key)?.is_some();
            if flags.create && exists {
                return abort(IndexError::XattrExists);
            }
            if flags.replace && !exists {
                return abort(IndexError::NoData);
            }
            tx.put(TreeId::Xattrs, &key, value)?;
            attr.ctime = now;
            tx.put_inode(&attr)
        })?;
        self.note_touched(ino, self.committed());
        Ok(())
    }

    /// The names of the xattrs of `ino`, in byte order. Errors: `NotFound`.
    pub fn list_xattrs(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let _r = self.read_lock();
        self.attr_nolock(ino)?;
        self.trees
            .xattrs
            .scan_prefix(ino_key(ino))
            .keys()
            .map(|key| {
                let key = key?;
                Ok(parse_named_key(&key)?.1.to_vec())
            })
            .collect()
    }

    /// Removes xattr `name` of `ino`; ctime becomes `now`. Errors: `NotFound` (inode),
    /// `NoData`, `InvalidName`/`NameTooLong`.
    pub fn remove_xattr(&self, ino: Ino, name: &[u8], now: Timestamp) -> Result<()> {
        validate_xattr_name(name)?;
        let key = named_key(ino, name);
        let _w = self.write_lock();
        self.transact(&Scan::default(), |tx| {
            let mut attr = tx.need_inode(ino)?;
            if tx.del(TreeId::Xattrs, &key)?.is_none() {
                return abort(IndexError::NoData);
            }
            attr.ctime = now;
            tx.put_inode(&attr)
        })?;
        self.note_touched(ino, self.committed());
        Ok(())
    }
}

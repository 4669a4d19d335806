//! Used-block map of exfat (being written).
use super::{ReadFn, Used};

/// Marks what the filesystem uses; Err(reason) takes the partition whole.
pub fn used(_read: &mut ReadFn<'_>, _size: u64, _used: &mut Used) -> Result<(), String> {
    Err("exfat: allocation map reader not written yet".into())
}

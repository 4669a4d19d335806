//! Used-block map of NTFS: the clusters set in `$Bitmap` (MFT record 6),
//! found through the MFT's own data runs, plus the boot sectors and what
//! lies past the volume's end.
//!
//! Before trusting the bitmap the reader checks what ntfs-3g checks before
//! mounting: the update sequence (fixups) of every record it reads, that
//! `$MFTMirr` matches `$MFT`, an NTFS 3.x volume that is not dirty, and a
//! `$LogFile` that is empty or says the volume was shut down cleanly (a
//! hibernated Windows, or one using fast start-up, leaves allocations
//! that are only in memory and in the log). Anything else: the partition
//! is taken whole.

use super::{read_checked, ReadFn, Used};
use std::collections::BTreeMap;

/// NTFS protects records in blocks of 512 bytes, whatever the sector size.
const FIXUP_BLOCK: usize = 512;
/// The largest cluster Windows formats (2 MiB).
const MAX_CLUSTER: u64 = 2 << 20;
/// The largest `$ATTRIBUTE_LIST` NTFS allows.
const MAX_ATTR_LIST: u64 = 256 << 10;
/// The largest `$LogFile` ntfs-3g looks into (its MaxLogFileSize).
const MAX_LOG_SCAN: u64 = 1 << 32;
/// The largest log restart page (system page size) accepted.
const MAX_LOG_PAGE: u32 = 64 << 10;

const AT_VOLUME_INFORMATION: u32 = 0x70;
const AT_ATTRIBUTE_LIST: u32 = 0x20;
const AT_DATA: u32 = 0x80;
const AT_BITMAP: u32 = 0xB0;
const AT_END: u32 = 0xFFFF_FFFF;

const REC_MFT: u64 = 0;
const REC_MFTMIRR: u64 = 1;
const REC_LOGFILE: u64 = 2;
const REC_VOLUME: u64 = 3;
const REC_BITMAP: u64 = 6;
/// Free MFT records from here on lose their attributes in the backup;
/// 0..15 are the system files and 16..23 are reserved for them.
const FIRST_WIPED_RECORD: u64 = 24;
/// Most pieces of free records excluded (three or more per record).
const MAX_CUTS: usize = 1 << 20;

/// `$VOLUME_INFORMATION` flags that mean "run chkdsk first".
const VOLUME_IS_DIRTY: u16 = 0x0001;
const VOLUME_CHKDSK_UNDERWAY: u16 = 0x4000;
/// Restart area: the volume was shut down cleanly.
const RESTART_VOLUME_IS_CLEAN: u16 = 0x0002;
const LOGFILE_NO_CLIENT: u16 = 0xFFFF;

/// Marks what the filesystem uses; Err(reason) takes the partition whole.
pub fn used(read: &mut ReadFn<'_>, size: u64, used: &mut Used) -> Result<(), String> {
    let boot = read_checked(read, size, 0, FIXUP_BLOCK, "NTFS boot sector").map_err(|e| format!("ntfs: {e}"))?;
    let geo = Geometry::parse(&boot, size)?;
    let mut vol = Volume { read, size, geo };

    // $MFT's own runs: the extent in record 0 maps at least the first
    // records, enough to reach the extension records of a fragmented MFT.
    let rec0 = vol.record_at(geo.mft_lcn * geo.cluster, REC_MFT)?;
    let first = single_extent(&rec0, AT_DATA)?;
    let boot_runs = match first {
        Some(Value::NonResident(ext)) if ext.lowest_vcn == 0 => ext.runs(geo)?,
        _ => return Err("ntfs: $MFT has no non-resident $DATA starting at VCN 0 in its base record".into()),
    };
    if boot_runs.first().map(|r| r.lcn) != Some(geo.mft_lcn) {
        return Err("ntfs: $MFT's data runs do not start at the boot sector's MFT cluster".into());
    }
    let mft = vol.data(&rec0, REC_MFT, &boot_runs)?;
    let mft_records = mft.data_size / geo.record;
    if mft.runs.is_empty() || mft_records <= REC_BITMAP || mft.init_size < (REC_BITMAP + 1) * geo.record {
        return Err(format!("ntfs: $MFT is too small ({} bytes)", mft.data_size));
    }

    let mut records = vec![rec0];
    for n in 1..=REC_VOLUME {
        records.push(vol.record(&mft, n)?);
    }
    let mirr = vol.data(&records[REC_MFTMIRR as usize], REC_MFTMIRR, &mft.runs)?;
    vol.check_mirror(&mirr, &records)?;
    vol.check_volume_information(&records[REC_VOLUME as usize])?;
    let log = vol.data(&records[REC_LOGFILE as usize], REC_LOGFILE, &mft.runs)?;
    vol.check_logfile(&log)?;

    let rec6 = vol.record(&mft, REC_BITMAP)?;
    let bitmap = vol.data(&rec6, REC_BITMAP, &mft.runs)?;
    let bitmap_bytes = geo.clusters.div_ceil(8);
    if bitmap.init_size < bitmap_bytes {
        return Err(format!(
            "ntfs: $Bitmap holds {} bytes but the volume has {} clusters",
            bitmap.init_size, geo.clusters
        ));
    }

    // Clusters the bitmap must mark in use: the boot sector and the
    // metadata just read.
    let mut own: Vec<(u64, u64)> = vec![(0, 1)];
    for s in [&mft, &mirr, &log, &bitmap] {
        own.extend(s.runs.iter().map(|r| (r.lcn, r.len)));
    }
    let mut at = 0u64;
    while at < bitmap_bytes {
        let n = (bitmap_bytes - at).min(super::MAX_READ as u64);
        let chunk = vol.stream(&bitmap, at, n as usize, "$Bitmap")?;
        let first_cluster = at * 8;
        check_own_bits(&chunk, first_cluster, geo.clusters, &own)?;
        used.mark_bits(&chunk, first_cluster, geo.cluster, 0);
        at += n;
    }
    for &(lcn, len) in &own {
        used.mark(lcn * geo.cluster, len * geo.cluster);
    }
    used.mark(0, geo.sector);
    // Deleted small files stay in their free MFT records. Not being able
    // to tell which records are free only keeps more, so it is no reason
    // to take the partition whole.
    let _ = vol.exclude_free_records(&records[REC_MFT as usize], &mft, used);
    // The backup boot sector (at total_sectors * bytes per sector, or the
    // volume's last sector) and the tail no cluster covers.
    used.mark_beyond(geo.clusters * geo.cluster);
    Ok(())
}

/// The boot sector's geometry, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    sector: u64,
    cluster: u64,
    record: u64,
    clusters: u64,
    mft_lcn: u64,
    mirr_lcn: u64,
}

impl Geometry {
    fn parse(b: &[u8], size: u64) -> Result<Geometry, String> {
        if b.get(3..11) != Some(b"NTFS    ".as_slice()) {
            return Err("ntfs: no \"NTFS    \" signature in the boot sector".into());
        }
        let sector = u64::from(le16(b, 0x0B)?);
        if !(256..=4096).contains(&sector) || !sector.is_power_of_two() {
            return Err(format!("ntfs: unsupported sector size {sector}"));
        }
        let spc_byte = b[0x0D];
        let spc = match spc_byte {
            1..=128 if spc_byte.is_power_of_two() => u64::from(spc_byte),
            // Clusters above 64 KiB: 2^-n sectors, n as a signed byte.
            0xF4..=0xFF => 1u64 << (256 - u32::from(spc_byte)),
            _ => return Err(format!("ntfs: invalid sectors per cluster byte {spc_byte:#x}")),
        };
        let cluster = sector * spc;
        if cluster > MAX_CLUSTER {
            return Err(format!("ntfs: cluster size {cluster} is too large"));
        }
        let total_sectors = le64(b, 0x28)?;
        if total_sectors.checked_mul(sector).is_none_or(|n| n > size) {
            return Err(format!(
                "ntfs: the volume ({total_sectors} sectors of {sector} bytes) does not fit the partition ({size} bytes): truncated?"
            ));
        }
        let clusters = total_sectors / spc;
        let cpr = b[0x40] as i8;
        let record = match cpr {
            1..=127 => cluster.saturating_mul(cpr as u64),
            -31..=-1 => 1u64 << (-i32::from(cpr)),
            _ => return Err(format!("ntfs: invalid clusters per MFT record {cpr}")),
        };
        if !(1024..=65536).contains(&record) || !record.is_power_of_two() {
            return Err(format!("ntfs: unsupported MFT record size {record}"));
        }
        let mft_lcn = le64(b, 0x30)?;
        let mirr_lcn = le64(b, 0x38)?;
        if mft_lcn >= clusters || mirr_lcn >= clusters || mft_lcn == 0 {
            return Err(format!(
                "ntfs: MFT cluster {mft_lcn} or mirror cluster {mirr_lcn} outside {clusters} clusters"
            ));
        }
        Ok(Geometry { sector, cluster, record, clusters, mft_lcn, mirr_lcn })
    }
}

/// A run of clusters of an attribute: `len` clusters from `vcn`, at `lcn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    vcn: u64,
    len: u64,
    lcn: u64,
}

/// Decodes mapping pairs into runs from `lowest_vcn`, checked to end at
/// `highest_vcn` and to stay inside the volume's `clusters`.
fn decode_runs(mp: &[u8], lowest_vcn: u64, highest_vcn: u64, clusters: u64) -> Result<Vec<Run>, String> {
    let bad = |why: &str| format!("ntfs: bad mapping pairs ({why})");
    let mut runs = Vec::new();
    let mut vcn = lowest_vcn;
    let mut lcn: i64 = 0;
    let mut i = 0usize;
    loop {
        let h = *mp.get(i).ok_or_else(|| bad("no terminator"))?;
        if h == 0 {
            break;
        }
        let (nl, no) = (usize::from(h & 0x0F), usize::from(h >> 4));
        if nl == 0 || nl > 8 || no > 8 {
            return Err(bad("field widths"));
        }
        let len = signed_le(mp.get(i + 1..i + 1 + nl).ok_or_else(|| bad("truncated"))?);
        let len = u64::try_from(len).ok().filter(|&l| l > 0).ok_or_else(|| bad("run length not positive"))?;
        if no == 0 {
            // Sparse: none of the metadata read here may have holes.
            return Err("ntfs: a system file has a sparse run".into());
        }
        let delta = signed_le(mp.get(i + 1 + nl..i + 1 + nl + no).ok_or_else(|| bad("truncated"))?);
        lcn = lcn.checked_add(delta).ok_or_else(|| bad("LCN overflow"))?;
        let l = u64::try_from(lcn).map_err(|_| bad("negative LCN"))?;
        if l.checked_add(len).is_none_or(|end| end > clusters) {
            return Err(format!(
                "ntfs: a data run ({len} clusters at {l}) lies outside the volume's {clusters} clusters"
            ));
        }
        runs.push(Run { vcn, len, lcn: l });
        // No stream read here has more clusters than the volume, which also
        // keeps every VCN times the cluster size from overflowing.
        vcn = vcn.checked_add(len).filter(|&v| v <= clusters).ok_or_else(|| bad("more clusters than the volume"))?;
        i += 1 + nl + no;
    }
    if vcn != highest_vcn.wrapping_add(1) {
        return Err(bad("runs do not end at the attribute's highest VCN"));
    }
    Ok(runs)
}

/// A little-endian two's complement integer of 1 to 8 bytes.
fn signed_le(b: &[u8]) -> i64 {
    let mut v: u64 = if b.last().is_some_and(|&x| x & 0x80 != 0) { u64::MAX } else { 0 };
    for (k, &x) in b.iter().enumerate().take(8) {
        v &= !(0xFFu64 << (8 * k));
        v |= u64::from(x) << (8 * k);
    }
    v as i64
}

/// Applies the update sequence array of a multi-sector record in place,
/// checking that every protected block ends with the sequence number.
fn apply_fixups(rec: &mut [u8], what: &str) -> Result<(), String> {
    let usa_ofs = usize::from(le16(rec, 4)?);
    let usa_count = usize::from(le16(rec, 6)?);
    let blocks = rec.len() / FIXUP_BLOCK;
    if !rec.len().is_multiple_of(FIXUP_BLOCK)
        || usa_count != blocks + 1
        || !usa_ofs.is_multiple_of(2)
        || usa_ofs < 8
        || usa_ofs + 2 * usa_count > FIXUP_BLOCK - 2
    {
        return Err(format!("ntfs: {what} has an invalid update sequence array"));
    }
    let usn = [rec[usa_ofs], rec[usa_ofs + 1]];
    for k in 0..blocks {
        let end = (k + 1) * FIXUP_BLOCK - 2;
        if rec[end..end + 2] != usn {
            return Err(format!("ntfs: {what} fails its update sequence check (torn or corrupt write)"));
        }
        let fix = usa_ofs + 2 + 2 * k;
        rec[end] = rec[fix];
        rec[end + 1] = rec[fix + 1];
    }
    Ok(())
}

/// One attribute of a record: `(type, name length, offset, length)`.
#[derive(Debug, Clone, Copy)]
struct AttrAt {
    ty: u32,
    name_len: u8,
    off: usize,
    len: usize,
}

/// The attributes of a (fixed-up, checked) MFT record.
fn attributes(rec: &[u8]) -> Result<Vec<AttrAt>, String> {
    let in_use = usize::try_from(le32(rec, 0x18)?).unwrap_or(usize::MAX);
    let mut off = usize::from(le16(rec, 0x14)?);
    if in_use > rec.len() || off >= in_use || !off.is_multiple_of(8) {
        return Err("ntfs: MFT record has an invalid attribute area".into());
    }
    let mut out = Vec::new();
    loop {
        let ty = le32(&rec[..in_use], off).map_err(|_| "ntfs: MFT record attributes run past its used size")?;
        if ty == AT_END {
            return Ok(out);
        }
        let len = usize::try_from(le32(rec, off + 4)?).unwrap_or(usize::MAX);
        if len < 0x18 || !len.is_multiple_of(8) || len > in_use - off {
            return Err(format!("ntfs: MFT record has an attribute of type {ty:#x} with bad length {len}"));
        }
        out.push(AttrAt { ty, name_len: rec[off + 9], off, len });
        off += len;
    }
}

/// One extent of a non-resident attribute.
#[derive(Debug, Clone)]
struct Extent {
    lowest_vcn: u64,
    highest_vcn: u64,
    alloc_size: u64,
    data_size: u64,
    init_size: u64,
    pairs: Vec<u8>,
}

impl Extent {
    fn runs(&self, geo: Geometry) -> Result<Vec<Run>, String> {
        decode_runs(&self.pairs, self.lowest_vcn, self.highest_vcn, geo.clusters)
    }
}

#[derive(Debug, Clone)]
enum Value {
    Resident(Vec<u8>),
    NonResident(Extent),
}

/// The value of the attribute at `a` in `rec`; compressed, encrypted and
/// sparse attributes are refused (none of the metadata read here is).
fn value(rec: &[u8], a: AttrAt) -> Result<Value, String> {
    let b = &rec[a.off..a.off + a.len];
    let flags = le16(b, 0x0C)?;
    if flags & (0x00FF | 0x4000 | 0x8000) != 0 {
        return Err(format!("ntfs: system attribute {:#x} is compressed, encrypted or sparse", a.ty));
    }
    if b[8] == 0 {
        let vlen = usize::try_from(le32(b, 0x10)?).unwrap_or(usize::MAX);
        let voff = usize::from(le16(b, 0x14)?);
        let v =
            voff.checked_add(vlen).and_then(|e| b.get(voff..e)).ok_or("ntfs: resident attribute overruns itself")?;
        return Ok(Value::Resident(v.to_vec()));
    }
    if b.len() < 0x40 {
        return Err("ntfs: non-resident attribute header is truncated".into());
    }
    let mp_off = usize::from(le16(b, 0x20)?);
    let pairs = b.get(mp_off..).filter(|_| mp_off >= 0x40).ok_or("ntfs: mapping pairs offset out of the attribute")?;
    Ok(Value::NonResident(Extent {
        lowest_vcn: le64(b, 0x10)?,
        highest_vcn: le64(b, 0x18)?,
        alloc_size: le64(b, 0x28)?,
        data_size: le64(b, 0x30)?,
        init_size: le64(b, 0x38)?,
        pairs: pairs.to_vec(),
    }))
}

/// The one unnamed attribute of type `ty` in `rec`, if any; an
/// `$ATTRIBUTE_LIST` or a second extent in the same record gives Err
/// (the caller that understands lists does not use this).
fn single_extent(rec: &[u8], ty: u32) -> Result<Option<Value>, String> {
    let mut found = None;
    for a in attributes(rec)? {
        if a.ty == ty && a.name_len == 0 {
            if found.is_some() {
                return Err(format!("ntfs: attribute {ty:#x} appears twice in one record"));
            }
            found = Some(value(rec, a)?);
        }
    }
    Ok(found)
}

/// An attribute's content, resident or mapped by runs.
#[derive(Debug, Clone)]
struct Stream {
    resident: Option<Vec<u8>>,
    runs: Vec<Run>,
    data_size: u64,
    init_size: u64,
}

struct Volume<'r, 'a> {
    read: &'r mut ReadFn<'a>,
    size: u64,
    geo: Geometry,
}

impl Volume<'_, '_> {
    /// `len` bytes at byte `off` of a stream (inside its initialised part).
    fn stream(&mut self, s: &Stream, off: u64, len: usize, what: &str) -> Result<Vec<u8>, String> {
        let end = off
            .checked_add(len as u64)
            .filter(|&e| e <= s.init_size)
            .ok_or_else(|| format!("ntfs: {what}: bytes {off}+{len} lie past its initialised size {}", s.init_size))?;
        if let Some(r) = &s.resident {
            return r
                .get(off as usize..end as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("ntfs: {what} is short"));
        }
        let mut out = Vec::with_capacity(len);
        let mut pos = off;
        while pos < end {
            let (disk, n) = self.locate(s, pos, end, what)?;
            out.extend(read_checked(self.read, self.size, disk, n as usize, what).map_err(|e| format!("ntfs: {e}"))?);
            pos += n;
        }
        Ok(out)
    }

    /// Where byte `pos` of non-resident stream `s` lies on the partition,
    /// and how many bytes from there up to `end` follow it contiguously.
    fn locate(&self, s: &Stream, pos: u64, end: u64, what: &str) -> Result<(u64, u64), String> {
        let cs = self.geo.cluster;
        let vcn = pos / cs;
        let i = s.runs.partition_point(|r| r.vcn + r.len <= vcn);
        let run =
            s.runs.get(i).filter(|r| r.vcn <= vcn).ok_or_else(|| format!("ntfs: {what}: VCN {vcn} is not mapped"))?;
        // Runs were checked to lie inside the volume, so none of this overflows.
        let run_end = (run.vcn + run.len) * cs;
        let disk = (run.lcn + (vcn - run.vcn)) * cs + pos % cs;
        Ok((disk, run_end.min(end) - pos))
    }

    /// A fixed-up, checked, in-use base or extension MFT record read at
    /// byte `off` of the partition.
    fn record_at(&mut self, off: u64, n: u64) -> Result<Vec<u8>, String> {
        let what = format!("MFT record {n}");
        let rec = read_checked(self.read, self.size, off, self.geo.record as usize, &what)
            .map_err(|e| format!("ntfs: {e}"))?;
        check_record(rec, n)
    }

    /// MFT record `n` through the MFT's runs.
    fn record(&mut self, mft: &Stream, n: u64) -> Result<Vec<u8>, String> {
        let off = n.checked_mul(self.geo.record).ok_or("ntfs: MFT record number overflows")?;
        let rec = self.stream(mft, off, self.geo.record as usize, &format!("MFT record {n}"))?;
        check_record(rec, n)
    }

    /// The unnamed `$DATA` of base record `rec` (number `n`), following an
    /// `$ATTRIBUTE_LIST` into extension records read through `mft_runs`.
    fn data(&mut self, rec: &[u8], n: u64, mft_runs: &[Run]) -> Result<Stream, String> {
        self.attr(rec, n, AT_DATA, mft_runs)
    }

    /// The unnamed attribute `ty` of base record `rec` (number `n`), as
    /// [`Volume::data`] finds `$DATA`.
    fn attr(&mut self, rec: &[u8], n: u64, ty: u32, mft_runs: &[Run]) -> Result<Stream, String> {
        let attrs = attributes(rec)?;
        let mut extents: Vec<Value> = Vec::new();
        match attrs.iter().find(|a| a.ty == AT_ATTRIBUTE_LIST) {
            None => {
                for a in attrs.iter().filter(|a| a.ty == ty && a.name_len == 0) {
                    extents.push(value(rec, *a)?);
                }
            }
            Some(&list_at) => {
                let list = match value(rec, list_at)? {
                    Value::Resident(v) => v,
                    Value::NonResident(e) => {
                        if e.lowest_vcn != 0 || e.data_size > MAX_ATTR_LIST || e.init_size != e.data_size {
                            return Err(format!("ntfs: MFT record {n} has an invalid non-resident attribute list"));
                        }
                        let s = Stream {
                            resident: None,
                            runs: e.runs(self.geo)?,
                            data_size: e.data_size,
                            init_size: e.data_size,
                        };
                        self.stream(&s, 0, e.data_size as usize, "attribute list")?
                    }
                };
                let mft = Stream {
                    resident: None,
                    runs: mft_runs.to_vec(),
                    data_size: u64::MAX,
                    init_size: mft_runs.last().map_or(0, |r| (r.vcn + r.len) * self.geo.cluster),
                };
                let mut read_recs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
                for (entry_ty, lowest_vcn, rn) in attribute_list(&list)? {
                    if entry_ty != ty {
                        continue;
                    }
                    let ext_rec = if rn == n {
                        rec.to_vec()
                    } else if let Some(r) = read_recs.get(&rn) {
                        r.clone()
                    } else {
                        let r = self.record(&mft, rn)?;
                        if le64(&r, 0x20)? & 0xFFFF_FFFF_FFFF != n {
                            return Err(format!("ntfs: MFT record {rn} is not an extension of record {n}"));
                        }
                        read_recs.insert(rn, r.clone());
                        r
                    };
                    let mut hit = None;
                    for a in attributes(&ext_rec)?.into_iter().filter(|a| a.ty == ty && a.name_len == 0) {
                        let v = value(&ext_rec, a)?;
                        let low = match &v {
                            Value::Resident(_) => 0,
                            Value::NonResident(e) => e.lowest_vcn,
                        };
                        if low == lowest_vcn {
                            hit = Some(v);
                        }
                    }
                    extents.push(hit.ok_or_else(|| {
                        format!(
                            "ntfs: attribute list of record {n} names a {} extent missing from record {rn}",
                            attr_name(ty)
                        )
                    })?);
                }
            }
        }
        self.combine(extents, n, ty)
    }

    /// One stream from the extents of an attribute, checked to be
    /// contiguous in VCNs and to cover its allocated size.
    fn combine(&self, mut extents: Vec<Value>, n: u64, ty: u32) -> Result<Stream, String> {
        let bad = |why: &str| format!("ntfs: {} of MFT record {n}: {why}", attr_name(ty));
        if extents.len() == 1 {
            if let Value::Resident(v) = &extents[0] {
                let len = v.len() as u64;
                return Ok(Stream { resident: Some(v.clone()), runs: Vec::new(), data_size: len, init_size: len });
            }
        }
        let mut exts = Vec::new();
        for v in extents.drain(..) {
            match v {
                Value::NonResident(e) => exts.push(e),
                Value::Resident(_) => return Err(bad("resident extent among several")),
            }
        }
        exts.sort_by_key(|e| e.lowest_vcn);
        let first = exts.first().ok_or_else(|| bad("missing"))?;
        if first.lowest_vcn != 0 {
            return Err(bad("does not start at VCN 0"));
        }
        let (alloc, data_size, init_size) = (first.alloc_size, first.data_size, first.init_size);
        if !alloc.is_multiple_of(self.geo.cluster) || data_size > alloc || init_size > data_size {
            return Err(bad("inconsistent sizes"));
        }
        let mut runs = Vec::new();
        for e in &exts {
            if e.lowest_vcn != runs.last().map_or(0, |r: &Run| r.vcn + r.len) {
                return Err(bad("extents are not contiguous"));
            }
            runs.extend(e.runs(self.geo)?);
        }
        let covered = runs.last().map_or(0, |r| r.vcn + r.len);
        if covered.checked_mul(self.geo.cluster) != Some(alloc) {
            return Err(bad("runs do not cover the allocated size"));
        }
        Ok(Stream { resident: None, runs, data_size, init_size })
    }

    /// Makes every free MFT record read as a free record with nothing in
    /// it: what a deleted file leaves there (the contents of a small
    /// resident file, its names) is excluded from the map, although the
    /// MFT's clusters are in use. A record is free when the `$MFT`'s own
    /// `$BITMAP` and the record's header both say so. Kept, as ntfsclone's
    /// metadata image keeps them: the header (which the driver reads to
    /// reuse the record: sequence number, update sequence number) and
    /// the update sequence's check words at the end of every 512-byte
    /// block, so that the record stays a valid free record. Err: nothing
    /// was excluded.
    fn exclude_free_records(&mut self, rec0: &[u8], mft: &Stream, used: &mut Used) -> Result<(), String> {
        let rs = self.geo.record;
        let bmp = self.attr(rec0, REC_MFT, AT_BITMAP, &mft.runs)?;
        // One bit per record the $MFT holds, in 8-byte granules.
        let bound = (mft.data_size / rs).div_ceil(8).next_multiple_of(8);
        let bmp_len = bmp.init_size.min(bound);
        let bits = self.stream(&bmp, 0, bmp_len as usize, "$MFT's $BITMAP")?;
        if bits.get(..2) != Some([0xFF, 0xFF].as_slice()) {
            return Err("ntfs: $MFT's $BITMAP does not mark the system records in use".into());
        }
        let free = |i: u64| bits.get((i / 8) as usize).is_some_and(|b| b >> (i % 8) & 1 == 0);
        // Records past the bitmap or the initialised data are left alone.
        let records = (mft.init_size / rs).min(bmp_len * 8);
        let per_read = (super::MAX_READ as u64 / rs).max(1);
        let mut cut = Vec::new();
        let mut first = FIRST_WIPED_RECORD;
        // The map keeps about a million exclusions; stop reading there.
        while first < records && cut.len() < MAX_CUTS {
            let end = first.saturating_add(per_read).min(records);
            let (Some(lo), Some(hi)) = ((first..end).find(|&i| free(i)), (first..end).rev().find(|&i| free(i))) else {
                first = end;
                continue;
            };
            let buf = self.stream(mft, lo * rs, ((hi - lo + 1) * rs) as usize, "MFT")?;
            for (k, rec) in buf.chunks_exact(rs as usize).enumerate() {
                let i = lo + k as u64;
                if !free(i) {
                    continue;
                }
                for (a, b) in free_record_wipe(rec) {
                    let (mut pos, stop) = (i * rs + a as u64, i * rs + b as u64);
                    while pos < stop {
                        let (disk, n) = self.locate(mft, pos, stop, "MFT")?;
                        cut.push((disk, n));
                        pos += n;
                    }
                }
            }
            first = end;
        }
        for (disk, n) in cut {
            used.exclude(disk, n);
        }
        Ok(())
    }

    /// `$MFTMirr` must start at the boot sector's mirror cluster and hold
    /// the same first records as `$MFT` (ntfs-3g refuses to mount otherwise).
    fn check_mirror(&mut self, mirr: &Stream, records: &[Vec<u8>]) -> Result<(), String> {
        if mirr.runs.first().map(|r| r.lcn) != Some(self.geo.mirr_lcn) {
            return Err("ntfs: $MFTMirr does not start at the boot sector's mirror cluster".into());
        }
        let count = (mirr.init_size / self.geo.record).min(records.len() as u64);
        if count == 0 {
            return Err("ntfs: $MFTMirr is empty".into());
        }
        for (n, rec) in records.iter().enumerate().take(count as usize) {
            let n = n as u64;
            let m = self.stream(mirr, n * self.geo.record, self.geo.record as usize, "$MFTMirr")?;
            let m = check_record(m, n)?;
            let used = (le32(rec, 0x18)? as usize).min(rec.len());
            if m.get(..used) != rec.get(..used) {
                return Err(format!("ntfs: $MFTMirr does not match $MFT (record {n})"));
            }
        }
        Ok(())
    }

    /// NTFS 3.x, neither dirty nor being checked.
    fn check_volume_information(&mut self, rec: &[u8]) -> Result<(), String> {
        let v = match single_extent(rec, AT_VOLUME_INFORMATION)? {
            Some(Value::Resident(v)) if v.len() >= 12 => v,
            _ => return Err("ntfs: $Volume has no valid $VOLUME_INFORMATION".into()),
        };
        let (major, minor, flags) = (v[8], v[9], le16(&v, 10)?);
        if major != 3 || minor > 1 {
            return Err(format!("ntfs: unsupported NTFS version {major}.{minor}"));
        }
        if flags & (VOLUME_IS_DIRTY | VOLUME_CHKDSK_UNDERWAY) != 0 {
            return Err("ntfs: NTFS volume is dirty (chkdsk needed)".into());
        }
        Ok(())
    }

    /// The `$LogFile` must be empty (all 0xFF, as mkntfs and ntfs-3g leave
    /// it) or its most recent restart area must say the volume was shut
    /// down cleanly; the restart pages are looked for where ntfs-3g looks.
    fn check_logfile(&mut self, log: &Stream) -> Result<(), String> {
        let size = log.init_size.min(MAX_LOG_SCAN);
        if size < 2 * 4096 {
            return Err("ntfs: $LogFile is too small".into());
        }
        let mut empty = true;
        let mut best: Option<(u64, bool)> = None;
        let mut found = 0;
        let mut pos = 0u64;
        while pos + FIXUP_BLOCK as u64 <= size && found < 2 {
            let head = self.stream(log, pos, FIXUP_BLOCK, "$LogFile")?;
            let magic = &head[..4];
            if magic != [0xFF; 4] {
                empty = false;
            } else if !empty {
                break;
            }
            if magic == b"RCRD" {
                break;
            }
            if magic == b"CHKD" {
                return Err("ntfs: $LogFile was modified by chkdsk; boot Windows once".into());
            }
            if magic == b"RSTR" {
                let (lsn, clean) = self.restart_page(log, pos, &head)?;
                found += 1;
                if best.is_none_or(|(l, _)| lsn > l) {
                    best = Some((lsn, clean));
                }
            }
            pos = if pos == 0 { FIXUP_BLOCK as u64 } else { pos * 2 };
        }
        if empty {
            return Ok(());
        }
        match best {
            Some((_, true)) => Ok(()),
            Some((_, false)) => {
                Err("ntfs: Windows hibernated or used fast start-up (the $LogFile is not clean)".into())
            }
            None => Err("ntfs: $LogFile is neither empty nor has a restart page".into()),
        }
    }

    /// Checks the restart page at `pos`; gives its current LSN and whether
    /// its restart area says the volume is clean.
    fn restart_page(&mut self, log: &Stream, pos: u64, head: &[u8]) -> Result<(u64, bool), String> {
        let bad = |why: &str| format!("ntfs: $LogFile restart page at {pos}: {why}");
        let sys_page = le32(head, 0x10)?;
        let log_page = le32(head, 0x14)?;
        for p in [sys_page, log_page] {
            if !(FIXUP_BLOCK as u32..=MAX_LOG_PAGE).contains(&p) || !p.is_power_of_two() {
                return Err(bad("invalid page size"));
            }
        }
        if pos != 0 && pos != u64::from(sys_page) {
            return Err(bad("not where its page size puts it"));
        }
        let (minor, major) = (le16(head, 0x1A)? as i16, le16(head, 0x1C)? as i16);
        if !matches!((major, minor), (1, 1) | (2, 0)) {
            return Err(bad(&format!("unsupported log version {major}.{minor}")));
        }
        let mut page = self.stream(log, pos, sys_page as usize, "$LogFile restart page")?;
        apply_fixups(&mut page, "$LogFile restart page")?;
        let ra = usize::from(le16(&page, 0x18)?);
        if !ra.is_multiple_of(8) || ra < 0x1E || ra + 0x30 > page.len() {
            return Err(bad("restart area out of the page"));
        }
        let lsn = le64(&page, ra)?;
        let in_use = le16(&page, ra + 0x0C)?;
        let flags = le16(&page, ra + 0x0E)?;
        Ok((lsn, in_use == LOGFILE_NO_CLIENT || flags & RESTART_VOLUME_IS_CLEAN != 0))
    }
}

/// A base or extension record's fixups applied and its header checked.
fn check_record(mut rec: Vec<u8>, n: u64) -> Result<Vec<u8>, String> {
    let what = format!("MFT record {n}");
    if rec.get(..4) != Some(b"FILE".as_slice()) {
        return Err(format!("ntfs: {what} has no FILE signature"));
    }
    apply_fixups(&mut rec, &what)?;
    if le16(&rec, 0x16)? & 1 == 0 {
        return Err(format!("ntfs: {what} is not in use"));
    }
    // NTFS 3.1 records carry their own number.
    if le16(&rec, 4)? >= 0x30 && u64::from(le32(&rec, 0x2C)?) != n & 0xFFFF_FFFF {
        return Err(format!("ntfs: {what} says it is record {}", le32(&rec, 0x2C)?));
    }
    Ok(rec)
}

/// The byte ranges of a free MFT record `rec` (read as stored, fixups not
/// applied) that may read as zeros: everything but its header and the
/// update sequence number, which ends every 512-byte block and opens the
/// update sequence array. The array's other entries hold the bytes the
/// check words stand in for (two bytes of stale data per block); zeroed,
/// they restore zeros there, as ntfsclone's wiped records have. Nothing
/// when the record is not a free `FILE` record with a sane header.
fn free_record_wipe(rec: &[u8]) -> Vec<(usize, usize)> {
    let header = || -> Result<Option<(usize, usize, usize)>, String> {
        let (usa_ofs, usa_count) = (usize::from(le16(rec, 4)?), usize::from(le16(rec, 6)?));
        let (first_attr, flags) = (usize::from(le16(rec, 0x14)?), le16(rec, 0x16)?);
        let sane = rec.get(..4) == Some(b"FILE".as_slice())
            && rec.len().is_multiple_of(FIXUP_BLOCK)
            && flags & 1 == 0
            && usa_count == rec.len() / FIXUP_BLOCK + 1
            && usa_ofs.is_multiple_of(2)
            && usa_ofs >= 0x2A
            && first_attr.is_multiple_of(8)
            && first_attr >= usa_ofs + 2 * usa_count
            && first_attr < FIXUP_BLOCK - 2;
        Ok(sane.then_some((usa_ofs, usa_count, first_attr)))
    };
    let Ok(Some((usa_ofs, usa_count, first_attr))) = header() else {
        return Vec::new();
    };
    let mut out = vec![(usa_ofs + 2, usa_ofs + 2 * usa_count)];
    for k in 0..rec.len() / FIXUP_BLOCK {
        let (a, b) = ((k * FIXUP_BLOCK).max(first_attr), (k + 1) * FIXUP_BLOCK - 2);
        if a < b {
            out.push((a, b));
        }
    }
    out
}

fn attr_name(ty: u32) -> String {
    match ty {
        AT_DATA => "$DATA".into(),
        AT_BITMAP => "$BITMAP".into(),
        _ => format!("attribute {ty:#x}"),
    }
}

/// `(type, lowest VCN, MFT record)` of each entry of an attribute list.
fn attribute_list(list: &[u8]) -> Result<Vec<(u32, u64, u64)>, String> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < list.len() {
        let len = usize::from(le16(list, off + 4)?);
        if len < 0x1A || off + len > list.len() {
            return Err("ntfs: attribute list entry has a bad length".into());
        }
        let ty = le32(list, off)?;
        let named = list[off + 6] != 0;
        if !named {
            out.push((ty, le64(list, off + 8)?, le64(list, off + 0x10)? & 0xFFFF_FFFF_FFFF));
        }
        off += len;
    }
    Ok(out)
}

/// Every cluster of `own` inside the chunk of the bitmap starting at
/// cluster `first` must be marked in use.
fn check_own_bits(chunk: &[u8], first: u64, clusters: u64, own: &[(u64, u64)]) -> Result<(), String> {
    let end = first.saturating_add(chunk.len() as u64 * 8).min(clusters);
    for &(lcn, len) in own {
        let (s, e) = (lcn.max(first), lcn.saturating_add(len).min(end));
        for c in s..e {
            let i = c - first;
            if chunk[(i / 8) as usize] >> (i % 8) & 1 == 0 {
                return Err(format!("ntfs: NTFS bitmap marks its own metadata free (cluster {c})"));
            }
        }
    }
    Ok(())
}

fn field<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], String> {
    at.checked_add(N)
        .and_then(|e| b.get(at..e))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("ntfs: field at byte {at} lies past the end of a {}-byte structure", b.len()))
}
fn le16(b: &[u8], at: usize) -> Result<u16, String> {
    field(b, at).map(u16::from_le_bytes)
}
fn le32(b: &[u8], at: usize) -> Result<u32, String> {
    field(b, at).map(u32::from_le_bytes)
}
fn le64(b: &[u8], at: usize) -> Result<u64, String> {
    field(b, at).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::super::{map, UsedMap, Verdict};
    use super::*;
    use crate::testdata::noise;
    use crate::testfs::{tool, Scratch};
    use std::process::Command;

    const MIB: u64 = 1 << 20;

    // ---- literal bytes ----

    #[test]
    fn mapping_pairs() {
        // 0x10 clusters at 0x1000, then 8 at 0x1000 - 0x20, then end.
        let mp = [0x21, 0x10, 0x00, 0x10, 0x11, 0x08, 0xE0, 0x00];
        let runs = decode_runs(&mp, 0, 0x17, 0x2000).unwrap();
        assert_eq!(runs, vec![Run { vcn: 0, len: 0x10, lcn: 0x1000 }, Run { vcn: 0x10, len: 8, lcn: 0xFE0 }]);
        // Wrong highest VCN, sparse run, outside the volume, no terminator.
        assert!(decode_runs(&mp, 0, 0x18, 0x2000).is_err());
        assert!(decode_runs(&[0x01, 0x10, 0x00], 0, 0x0F, 0x2000).unwrap_err().contains("sparse"));
        assert!(decode_runs(&mp, 0, 0x17, 0x1005).unwrap_err().contains("outside"));
        assert!(decode_runs(&mp[..7], 0, 0x17, 0x2000).is_err());
        // An LCN going negative.
        assert!(decode_runs(&[0x11, 0x01, 0x80, 0x00], 0, 0, 0x2000).unwrap_err().contains("negative"));
        assert_eq!(signed_le(&[0xFF]), -1);
        assert_eq!(signed_le(&[0x00, 0x80]), -32768);
        assert_eq!(signed_le(&[0xFF, 0x7F]), 32767);
    }

    #[test]
    fn fixups_checked_and_applied() {
        let mut rec = vec![0u8; 1024];
        rec[..4].copy_from_slice(b"FILE");
        rec[4..6].copy_from_slice(&0x30u16.to_le_bytes());
        rec[6..8].copy_from_slice(&3u16.to_le_bytes());
        rec[0x30..0x36].copy_from_slice(&[7, 0, 0xAA, 0xBB, 0xCC, 0xDD]);
        rec[510..512].copy_from_slice(&[7, 0]);
        rec[1022..1024].copy_from_slice(&[7, 0]);
        let mut ok = rec.clone();
        apply_fixups(&mut ok, "test").unwrap();
        assert_eq!((&ok[510..512], &ok[1022..1024]), (&[0xAA, 0xBB][..], &[0xCC, 0xDD][..]));
        let mut torn = rec.clone();
        torn[1023] = 1;
        assert!(apply_fixups(&mut torn, "test").unwrap_err().contains("update sequence"));
        let mut short = rec;
        short[6] = 2;
        assert!(apply_fixups(&mut short, "test").unwrap_err().contains("invalid update sequence"));
    }

    #[test]
    fn free_record_keeps_header_and_check_words() {
        // A free 1 KiB NTFS 3.1 record: array at 0x30 (3 entries), first
        // attribute at 0x38.
        let mut rec = vec![0xAAu8; 1024];
        rec[..4].copy_from_slice(b"FILE");
        rec[4..6].copy_from_slice(&0x30u16.to_le_bytes());
        rec[6..8].copy_from_slice(&3u16.to_le_bytes());
        rec[0x14..0x16].copy_from_slice(&0x38u16.to_le_bytes());
        rec[0x16..0x18].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(free_record_wipe(&rec), vec![(0x32, 0x36), (0x38, 510), (512, 1022)]);
        // 4 KiB records have a check word per 512 bytes.
        let mut big = rec.clone();
        big.resize(4096, 0xAA);
        big[6..8].copy_from_slice(&9u16.to_le_bytes());
        big[0x14..0x16].copy_from_slice(&0x48u16.to_le_bytes());
        let w = free_record_wipe(&big);
        assert_eq!(w.len(), 9);
        assert_eq!((w[0], w[1], w[8]), ((0x32, 0x42), (0x48, 510), (3584, 4094)));
        // In use, not a FILE record, or a header that does not add up: nothing.
        let mut in_use = rec.clone();
        in_use[0x16] = 1;
        let mut baad = rec.clone();
        baad[..4].copy_from_slice(b"BAAD");
        let mut count = rec.clone();
        count[6] = 2;
        let mut attr = rec.clone();
        attr[0x14] = 0x34;
        let mut odd = rec.clone();
        odd[0x14..0x16].copy_from_slice(&0x200u16.to_le_bytes());
        for r in [in_use, baad, count, attr, odd, vec![0; 1024], vec![0xFF; 8]] {
            assert!(free_record_wipe(&r).is_empty());
        }
    }

    fn boot(bps: u16, spc: u8, total: u64, mft: u64, cpr: i8) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[3..11].copy_from_slice(b"NTFS    ");
        b[0x0B..0x0D].copy_from_slice(&bps.to_le_bytes());
        b[0x0D] = spc;
        b[0x28..0x30].copy_from_slice(&total.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&mft.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&2u64.to_le_bytes());
        b[0x40] = cpr as u8;
        b
    }

    #[test]
    fn boot_geometry() {
        let g = Geometry::parse(&boot(512, 8, 65535, 4, -10), 32 * MIB).unwrap();
        assert_eq!((g.cluster, g.record, g.clusters), (4096, 1024, 8191));
        // 2^-(-12) = 4096 sectors: 2 MiB clusters; 4 KiB records.
        let g = Geometry::parse(&boot(512, 0xF4, 1 << 20, 4, -12), 512 * MIB).unwrap();
        assert_eq!((g.cluster, g.record, g.clusters), (2 * MIB, 4096, 256));
        // A record of one 4 KiB cluster.
        assert_eq!(Geometry::parse(&boot(4096, 1, 8192, 4, 1), 32 * MIB).unwrap().record, 4096);
        for (b, why) in [
            (boot(512, 8, 65535, 4, -10), "does not fit"),
            (boot(500, 8, 100, 4, -10), "sector size"),
            (boot(512, 3, 100, 4, -10), "sectors per cluster"),
            (boot(512, 8, 20000, 4, -9), "record size"),
            (boot(512, 8, 20000, 9000, -10), "outside"),
        ] {
            let err = Geometry::parse(&b, 16 * MIB).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let mut b = boot(512, 8, 100, 4, -10);
        b[3] = b'X';
        assert!(Geometry::parse(&b, MIB).unwrap_err().contains("signature"));
    }

    // ---- images made by the real tools ----

    fn run(name: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new(tool(name)).args(args).output().expect("run tool");
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn mkntfs(s: &Scratch, size: u64, args: &[&str]) -> String {
        let img = s.path("ntfs.img");
        std::fs::File::create(&img).and_then(|f| f.set_len(size)).expect("image file");
        let mut a = vec!["-Q", "-F", "-L", "bv"];
        a.extend_from_slice(args);
        a.push(&img);
        run("mkntfs", &a);
        img
    }

    /// The verdict on an image and how many bytes the reader asked for.
    fn verdict(img: &[u8]) -> (Verdict, u64) {
        let mut total = 0u64;
        let mut read = |off: u64, len: usize| -> Result<Vec<u8>, String> {
            total += len as u64;
            let start = usize::try_from(off).map_err(|e| e.to_string())?;
            img.get(start..start + len).map(<[u8]>::to_vec).ok_or_else(|| format!("past the end at {off}"))
        };
        let v = map("ntfs", &mut read, img.len() as u64);
        (v, total)
    }

    fn used_map(img: &[u8]) -> UsedMap {
        match verdict(img).0 {
            Verdict::UsedOnly(m) => m,
            Verdict::Whole(why) => panic!("taken whole: {why}"),
        }
    }

    fn whole(img: &[u8]) -> String {
        match verdict(img).0 {
            Verdict::Whole(why) => why,
            Verdict::UsedOnly(m) => panic!("expected Whole, got a map of {} used bytes", m.used_bytes()),
        }
    }

    fn zeroed(img: &[u8], m: &UsedMap) -> Vec<u8> {
        let mut out = vec![0u8; img.len()];
        for &(s, e) in m.ranges() {
            out[s as usize..e as usize].copy_from_slice(&img[s as usize..e as usize]);
        }
        out
    }

    /// Whether `needle` occurs in `hay`: scans for its first 8 bytes as
    /// one word (fast enough unoptimised, on tens of MiB).
    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        let head = u64::from_le_bytes(needle[..8].try_into().expect("a needle of 8+ bytes"));
        let mut i = 0;
        while i + needle.len() <= hay.len() {
            let w = u64::from_le_bytes(hay[i..i + 8].try_into().unwrap());
            if w == head && hay[i..].starts_with(needle) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The `BV-RESIDENT-MARKER-nnn-` strings in `hay`, sorted, once each:
    /// one pass over the image.
    fn markers(hay: &[u8]) -> Vec<String> {
        let prefix = b"BV-RESIDENT-MARKER-";
        let head = u64::from_le_bytes(prefix[..8].try_into().unwrap());
        let mut found = std::collections::BTreeSet::new();
        for i in 0..hay.len().saturating_sub(prefix.len() + 4) {
            let w = u64::from_le_bytes(hay[i..i + 8].try_into().unwrap());
            if w == head && hay[i..].starts_with(prefix) {
                found.insert(String::from_utf8_lossy(&hay[i..i + prefix.len() + 4]).into_owned());
            }
        }
        found.into_iter().collect()
    }

    /// Copies `files` into the image with ntfscp (no mount needed) and
    /// "deletes" the marker files by overwriting each with a short one:
    /// ntfscp truncates, freeing the clusters that held the marker.
    fn populate(s: &Scratch, img: &str, seed: u64, marker: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut kept = Vec::new();
        for i in 0..12u64 {
            let len = match i % 4 {
                0 => 300 + i as usize * 7,           // resident in the MFT record
                1 => 5000 + i as usize * 1111,       // a few clusters
                2 => 200_000 + i as usize * 10_007,  // some hundred KiB
                _ => 1_000_000 + i as usize * 3_333, // about 1 MiB
            };
            let name = format!("f{i:02}.bin");
            let local = s.path(&name);
            let data = noise(seed + i, len);
            std::fs::write(&local, &data).expect("write file");
            run("ntfscp", &["-f", img, &local, &format!("/{name}")]);
            kept.push((name, data));
        }
        for i in 0..2u64 {
            let name = format!("gone{i}.bin");
            let local = s.path(&name);
            let mut data = noise(seed + 100 + i, 150_000);
            for k in 0..200 {
                data.extend_from_slice(marker);
                data.extend_from_slice(format!("{k:05}").as_bytes());
            }
            std::fs::write(&local, &data).expect("write file");
            run("ntfscp", &["-f", img, &local, &format!("/{name}")]);
            std::fs::write(&local, b"short").expect("write file");
            run("ntfscp", &["-f", img, &local, &format!("/{name}")]);
            kept.push((name, b"short".to_vec()));
        }
        kept
    }

    /// The zeroed copy passes ntfsfix -n and every file reads back the same.
    fn check_copy(s: &Scratch, copy: &[u8], files: &[(String, Vec<u8>)]) {
        let path = s.path("copy.img");
        std::fs::write(&path, copy).expect("write copy");
        check_copy_file(&path, files);
    }

    fn check_copy_file(path: &str, files: &[(String, Vec<u8>)]) {
        let out = Command::new(tool("ntfsfix")).args(["-n", path]).output().expect("ntfsfix");
        assert!(out.status.success(), "ntfsfix -n on the zeroed copy: {}", String::from_utf8_lossy(&out.stdout));
        for (name, data) in files {
            let got = run("ntfscat", &[path, &format!("/{name}")]);
            assert!(got == *data, "{name} differs in the zeroed copy ({} vs {} bytes)", got.len(), data.len());
        }
    }

    #[test]
    fn empty_volume_uses_little() {
        let s = Scratch::new("empty");
        let img = std::fs::read(mkntfs(&s, 64 * MIB, &[])).expect("read image");
        let (v, read) = verdict(&img);
        let Verdict::UsedOnly(m) = v else { panic!("taken whole: {v:?}") };
        assert!(m.used_bytes() < img.len() as u64 / 10, "{} bytes used", m.used_bytes());
        // The $LogFile (2 MiB+) and the MFT are in; the backup boot sector too.
        assert!(m.any_used(img.len() as u64 - 512, 512));
        assert!(read < 2 * MIB, "read {read} bytes");
        check_copy(&s, &zeroed(&img, &m), &[]);
    }

    #[test]
    fn populated_volumes_survive_zeroing() {
        let cases: &[(&str, u64, &[&str])] = &[
            ("c4k", 32 * MIB, &[]),
            ("c8k", 64 * MIB, &["-c", "8192"]),
            ("s4k", 32 * MIB, &["-s", "4096"]),
            ("c512", 32 * MIB, &["-c", "512"]),
            ("c128k", 64 * MIB, &["-c", "131072"]),
        ];
        for (i, &(tag, size, args)) in cases.iter().enumerate() {
            let s = Scratch::new(tag);
            let path = mkntfs(&s, size, args);
            let marker = format!("BV-DELETED-MARKER-{tag}-");
            let files = populate(&s, &path, 1000 * i as u64, marker.as_bytes());
            let img = std::fs::read(&path).expect("read image");
            assert!(contains(&img, marker.as_bytes()), "{tag}: the marker was never written");
            let m = used_map(&img);
            let copy = zeroed(&img, &m);
            assert!(!contains(&copy, marker.as_bytes()), "{tag}: freed clusters survived the zeroing");
            let payload: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
            assert!(m.used_bytes() < payload + size / 8, "{tag}: {} bytes used for {payload}", m.used_bytes());
            check_copy(&s, &copy, &files);
        }
    }

    /// Real deletes need a mount: ntfs-3g over FUSE, where the sandbox
    /// allows it (skipped with a note otherwise).
    #[test]
    fn deleted_files_via_fuse_mount() {
        let s = Scratch::new("fuse");
        let path = mkntfs(&s, 48 * MIB, &[]);
        let mnt = s.path("mnt");
        std::fs::create_dir_all(&mnt).expect("mount point");
        let ok = Command::new(tool("ntfs-3g")).args([&path, &mnt]).status().is_ok_and(|st| st.success());
        assert!(ok, "ntfs-3g could not mount {} (needs root and /dev/fuse, as `make unit` has)", path);
        let marker = b"BV-FUSE-DELETED-MARKER";
        let mut files = Vec::new();
        let mut write = || -> std::io::Result<()> {
            std::fs::create_dir_all(format!("{mnt}/dir/sub"))?;
            for i in 0..40u64 {
                let name = if i % 3 == 0 { format!("dir/sub/f{i}") } else { format!("f{i}") };
                let data = noise(7000 + i, (i as usize * 37_123) % 900_000 + 10);
                std::fs::write(format!("{mnt}/{name}"), &data)?;
                files.push((name, data));
            }
            for i in 0..4u64 {
                let mut data = noise(8000 + i, 300_000);
                data.extend(marker.repeat(1000));
                std::fs::write(format!("{mnt}/dir/gone{i}"), &data)?;
            }
            Command::new("sync").status()?;
            for i in 0..4u64 {
                std::fs::remove_file(format!("{mnt}/dir/gone{i}"))?;
            }
            Ok(())
        };
        let written = write();
        let unmounted = Command::new("umount").arg(&mnt).status().is_ok_and(|st| st.success());
        written.expect("writing through the mount");
        assert!(unmounted, "umount {mnt}");
        let img = std::fs::read(&path).expect("read image");
        assert!(contains(&img, marker), "the marker was never written");
        let m = used_map(&img);
        let copy = zeroed(&img, &m);
        assert!(!contains(&copy, marker), "deleted files survived the zeroing");
        check_copy(&s, &copy, &files);
        // And through the driver, read-only.
        let copy_path = s.path("copy.img");
        if Command::new(tool("ntfs-3g")).args(["-o", "ro", &copy_path, &mnt]).status().is_ok_and(|st| st.success()) {
            let read = files
                .iter()
                .map(|(n, d)| (n, std::fs::read(format!("{mnt}/{n}")).ok() == Some(d.clone())))
                .collect::<Vec<_>>();
            let _ = Command::new("umount").arg(&mnt).status();
            for (n, same) in read {
                assert!(same, "{n} differs through the mounted copy");
            }
        }
    }

    /// Mounts `img` on `mnt` with ntfs-3g, runs `f`, unmounts.
    fn mounted<T>(img: &str, mnt: &str, f: impl FnOnce() -> std::io::Result<T>) -> T {
        std::fs::create_dir_all(mnt).expect("mount point");
        let ok = Command::new(tool("ntfs-3g")).args([img, mnt]).status().is_ok_and(|st| st.success());
        assert!(ok, "ntfs-3g could not mount {img} (needs root and /dev/fuse, as `make unit` has)");
        let done = f();
        let unmounted = Command::new("umount").arg(mnt).status().is_ok_and(|st| st.success());
        let done = done.expect("writing through the mount");
        assert!(unmounted, "umount {mnt}");
        done
    }

    /// Small files live inside their MFT record; deleting one leaves its
    /// bytes in a free record of the (in-use) MFT. The zeroed copy must
    /// lose them and still let ntfs-3g reuse those records.
    #[test]
    fn deleted_resident_files_are_wiped() {
        // With 512-byte clusters every record spans two clusters.
        deleted_resident_files_case("resident", &[]);
        deleted_resident_files_case("resident512", &["-c", "512"]);
    }

    fn deleted_resident_files_case(tag: &str, args: &[&str]) {
        use std::os::unix::fs::MetadataExt;
        let s = Scratch::new(tag);
        let path = mkntfs(&s, 32 * MIB, args);
        let mnt = s.path("mnt");
        let marker = |i: u64| format!("BV-RESIDENT-MARKER-{i:03}-").into_bytes();
        let small = |seed: u64, i: u64| noise(seed + i, 100 + (i as usize * 97) % 500);
        let mut files = Vec::new();
        let gone = mounted(&path, &mnt, || {
            let mut gone = Vec::new();
            for i in 0..50u64 {
                let mut data = small(9000, i);
                data.splice(40..40, marker(i));
                std::fs::write(format!("{mnt}/m{i}"), &data)?;
                let name = format!("k{i}");
                let data = if i % 10 == 0 { noise(9500 + i, 100_000 + i as usize * 5_000) } else { small(9200, i) };
                std::fs::write(format!("{mnt}/{name}"), &data)?;
                files.push((name, data));
            }
            Command::new("sync").status()?;
            for i in 0..50u64 {
                gone.push(std::fs::metadata(format!("{mnt}/m{i}"))?.ino());
                std::fs::remove_file(format!("{mnt}/m{i}"))?;
            }
            Ok(gone)
        });
        let img = std::fs::read(&path).expect("read image");
        let m = used_map(&img);
        let copy = zeroed(&img, &m);
        let all: Vec<String> = (0..50).map(|i| String::from_utf8(marker(i)).expect("ascii")).collect();
        assert_eq!(markers(&img), all, "the markers were not all left in free records");
        assert_eq!(markers(&copy), Vec::<String>::new(), "deleted resident files survived the zeroing");
        check_copy(&s, &copy, &files);
        // The driver reuses the wiped records for new files.
        let copy_path = s.path("copy.img");
        let mut new = Vec::new();
        let reused = mounted(&copy_path, &mnt, || {
            let mut inos = Vec::new();
            for i in 0..100u64 {
                let (name, data) = (format!("n{i}"), small(9700, i));
                std::fs::write(format!("{mnt}/{name}"), &data)?;
                inos.push(std::fs::metadata(format!("{mnt}/{name}"))?.ino());
                new.push((name, data));
            }
            Ok(inos)
        });
        assert!(gone.iter().all(|ino| reused.contains(ino)), "wiped records {gone:?} not reused: {reused:?}");
        files.extend(new);
        check_copy_file(&copy_path, &files);
    }

    // ---- damage ----

    fn le_u64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// (cluster size, record size, byte offset of the MFT).
    fn layout(img: &[u8]) -> (usize, usize, usize) {
        let bps = u16::from_le_bytes([img[11], img[12]]) as usize;
        let cs = bps * img[13] as usize;
        let cpr = img[0x40] as i8;
        let rs = if cpr < 0 { 1 << -cpr } else { cs * cpr as usize };
        (cs, rs, le_u64(img, 0x30) as usize * cs)
    }

    /// The first LCN of file record `n`'s data, from ntfsinfo.
    fn first_lcn(path: &str, n: u64) -> usize {
        let out = String::from_utf8(run("ntfsinfo", &["-v", "-i", &n.to_string(), path])).expect("utf-8");
        let mut lines = out.lines().skip_while(|l| !l.contains("Runlist:"));
        let row = lines.nth(1).expect("a runlist row");
        let lcn = row.split_whitespace().nth(1).expect("LCN column");
        usize::from_str_radix(lcn.trim_start_matches("0x"), 16).expect("hex LCN")
    }

    /// Runs `f` on the fixed-up record `n` (in the MFT at `mft`) and
    /// writes it back protected again.
    fn patch_record(img: &mut [u8], mft: usize, rs: usize, n: usize, f: impl FnOnce(&mut [u8])) {
        let rec = &mut img[mft + n * rs..mft + (n + 1) * rs];
        let usa = u16::from_le_bytes([rec[4], rec[5]]) as usize;
        for k in 0..rs / 512 {
            let (e, fx) = ((k + 1) * 512 - 2, usa + 2 + 2 * k);
            rec.copy_within(fx..fx + 2, e);
        }
        f(rec);
        for k in 0..rs / 512 {
            let (e, fx) = ((k + 1) * 512 - 2, usa + 2 + 2 * k);
            rec.copy_within(e..e + 2, fx);
            rec.copy_within(usa..usa + 2, e);
        }
    }

    /// The offset of the first attribute `ty` in a fixed-up record.
    fn attr_offset(rec: &[u8], ty: u32) -> usize {
        let mut off = u16::from_le_bytes([rec[0x14], rec[0x15]]) as usize;
        loop {
            let t = u32::from_le_bytes(rec[off..off + 4].try_into().unwrap());
            assert_ne!(t, AT_END, "no attribute {ty:#x}");
            if t == ty {
                return off;
            }
            off += u32::from_le_bytes(rec[off + 4..off + 8].try_into().unwrap()) as usize;
        }
    }

    /// The value offset of resident attribute `ty` in a fixed-up record.
    fn resident_value(rec: &[u8], ty: u32) -> usize {
        let off = attr_offset(rec, ty);
        off + u16::from_le_bytes([rec[off + 0x14], rec[off + 0x15]]) as usize
    }

    /// Splits the $MFT's one run (7 clusters at LCN 4, mkntfs on 32 MiB)
    /// into two extents, VCN 0-4 in record 0 and VCN 5-6 in record 16,
    /// tied by an $ATTRIBUTE_LIST, in both $MFT and $MFTMirr; `base_of_16`
    /// is the base record the extension names.
    fn split_mft(img: &mut [u8], base_of_16: u64) {
        let (cs, rs, mft) = layout(img);
        assert_eq!((cs, rs, mft), (4096, 1024, 4 * 4096), "unexpected mkntfs layout");
        let mut data_attr = Vec::new();
        let mut list = Vec::new();
        let mut rec0_seq = 0u16;
        let mirr = le_u64(img, 0x38) as usize * cs;
        for at in [mft, mirr] {
            patch_record(img, at, rs, 0, |r| {
                rec0_seq = u16::from_le_bytes([r[0x10], r[0x11]]);
                let d = attr_offset(r, AT_DATA);
                assert_eq!(&r[d + 0x40..d + 0x44], &[0x11, 0x07, 0x04, 0x00], "one run of 7 clusters at 4");
                data_attr = r[d..d + 0x48].to_vec();
                r[d + 0x18..d + 0x20].copy_from_slice(&4u64.to_le_bytes());
                r[d + 0x40..d + 0x48].copy_from_slice(&[0x11, 0x05, 0x04, 0, 0, 0, 0, 0]);
                // The list: each attribute of record 0 in order, the
                // second $DATA extent after the first.
                list.clear();
                let entry = |ty: u32, vcn: u64, rec: u64, seq: u16, inst: u16| {
                    let mut e = vec![0u8; 0x20];
                    e[..4].copy_from_slice(&ty.to_le_bytes());
                    e[4..6].copy_from_slice(&0x20u16.to_le_bytes());
                    e[7] = 0x1A;
                    e[8..16].copy_from_slice(&vcn.to_le_bytes());
                    e[16..24].copy_from_slice(&(rec | u64::from(seq) << 48).to_le_bytes());
                    e[24..26].copy_from_slice(&inst.to_le_bytes());
                    e
                };
                for ty in [0x10u32, 0x30, 0x80, 0xB0] {
                    let o = attr_offset(r, ty);
                    list.extend(entry(ty, 0, 0, rec0_seq, u16::from_le_bytes([r[o + 0x0E], r[o + 0x0F]])));
                    if ty == 0x80 {
                        list.extend(entry(ty, 5, 16, 16, 0));
                    }
                }
                let next_inst = u16::from_le_bytes([r[0x28], r[0x29]]);
                r[0x28..0x2A].copy_from_slice(&(next_inst + 1).to_le_bytes());
                let mut attr = vec![0u8; 0x18];
                attr[..4].copy_from_slice(&AT_ATTRIBUTE_LIST.to_le_bytes());
                attr[4..8].copy_from_slice(&(0x18 + list.len() as u32).to_le_bytes());
                attr[0x0A] = 0x18;
                attr[0x0E..0x10].copy_from_slice(&next_inst.to_le_bytes());
                attr[0x10..0x14].copy_from_slice(&(list.len() as u32).to_le_bytes());
                attr[0x14] = 0x18;
                attr.extend_from_slice(&list);
                // Insert it after $STANDARD_INFORMATION.
                let at = attr_offset(r, 0x30);
                let used = u32::from_le_bytes(r[0x18..0x1C].try_into().unwrap()) as usize;
                r.copy_within(at..used, at + attr.len());
                r[at..at + attr.len()].copy_from_slice(&attr);
                r[0x18..0x1C].copy_from_slice(&((used + attr.len()) as u32).to_le_bytes());
            });
        }
        patch_record(img, mft, rs, 16, |r| {
            assert_eq!(u16::from_le_bytes([r[0x10], r[0x11]]), 16, "record 16's sequence number");
            r[0x16] |= 1;
            r[0x20..0x28].copy_from_slice(&(base_of_16 | u64::from(rec0_seq) << 48).to_le_bytes());
            r[0x28..0x2A].copy_from_slice(&1u16.to_le_bytes());
            r[0x2C..0x30].copy_from_slice(&16u32.to_le_bytes());
            let mut ext = data_attr.clone();
            ext[0x0E..0x10].copy_from_slice(&0u16.to_le_bytes());
            ext[0x10..0x18].copy_from_slice(&5u64.to_le_bytes());
            ext[0x28..0x40].fill(0);
            ext[0x40..0x48].copy_from_slice(&[0x11, 0x02, 0x09, 0, 0, 0, 0, 0]);
            r[0x38..0x80].copy_from_slice(&ext);
            r[0x80..0x88].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
            r[0x18..0x1C].copy_from_slice(&0x88u32.to_le_bytes());
        });
        // Record 16 in use in the $MFT's own $BITMAP (at LCN 2).
        img[2 * cs + 2] |= 1;
    }

    #[test]
    fn fragmented_mft_through_attribute_list() {
        let (s, _p, img) = fresh("attrlist");
        let plain = used_map(&img);
        let mut split = img.clone();
        split_mft(&mut split, 0);
        // ntfs-3g reads it too: records past VCN 4 resolve through record 16.
        let path = s.path("split.img");
        std::fs::write(&path, &split).expect("write image");
        run("ntfsfix", &["-n", &path]);
        let info = String::from_utf8_lossy(&run("ntfsinfo", &["-v", "-i", "0", &path])).into_owned();
        assert!(info.contains("$ATTRIBUTE_LIST"), "{info}");
        run("ntfsinfo", &["-i", "26", &path]);
        assert_eq!(used_map(&split), plain);
        let mut stray = img;
        split_mft(&mut stray, 5);
        assert!(whole(&stray).contains("not an extension of record 0"), "{}", whole(&stray));
    }

    /// A freshly made 32 MiB volume: (scratch, path, bytes).
    fn fresh(tag: &str) -> (Scratch, String, Vec<u8>) {
        let s = Scratch::new(tag);
        let path = mkntfs(&s, 32 * MIB, &[]);
        let img = std::fs::read(&path).expect("read image");
        used_map(&img);
        (s, path, img)
    }

    #[test]
    fn dirty_volume_and_old_version_are_whole() {
        let (_s, _p, img) = fresh("dirty");
        let (_, rs, mft) = layout(&img);
        // $Volume is record 3 of both $MFT and $MFTMirr.
        let mirr = le_u64(&img, 0x38) as usize * layout(&img).0;
        let mut dirty = img.clone();
        for at in [mft, mirr] {
            patch_record(&mut dirty, at, rs, 3, |r| {
                let v = resident_value(r, AT_VOLUME_INFORMATION);
                r[v + 10] |= 1;
            });
        }
        assert!(whole(&dirty).contains("dirty"), "{}", whole(&dirty));
        let mut old = img;
        for at in [mft, mirr] {
            patch_record(&mut old, at, rs, 3, |r| {
                let v = resident_value(r, AT_VOLUME_INFORMATION);
                r[v + 8] = 1;
            });
        }
        assert!(whole(&old).contains("version 1.1"), "{}", whole(&old));
    }

    #[test]
    fn torn_records_and_mirror_mismatch_are_whole() {
        let (_s, _p, img) = fresh("torn");
        let (_, rs, mft) = layout(&img);
        for n in [0, 6] {
            let mut torn = img.clone();
            torn[mft + n * rs + 1023] ^= 0x55;
            let why = whole(&torn);
            assert!(why.contains(&format!("record {n} fails its update sequence")), "{why}");
        }
        let mut mirr = img.clone();
        let at = le_u64(&img, 0x38) as usize * layout(&img).0;
        mirr[at + 0x40] ^= 1;
        assert!(whole(&mirr).contains("$MFTMirr does not match"), "{}", whole(&mirr));
        // A $Bitmap shorter than the volume's clusters.
        let mut short = img.clone();
        patch_record(&mut short, mft, rs, 6, |r| {
            let d = attr_offset(r, AT_DATA);
            for f in [0x30, 0x38] {
                r[d + f..d + f + 8].copy_from_slice(&100u64.to_le_bytes());
            }
        });
        assert!(whole(&short).contains("$Bitmap holds 100 bytes"), "{}", whole(&short));
        // A partition cut short of the volume.
        assert!(whole(&img[..16 << 20]).contains("does not fit"));
    }

    /// Free records lose all but their header and check words; when the
    /// $MFT's own $BITMAP is in doubt they are kept whole, and the map is
    /// still read.
    #[test]
    fn mft_bitmap_in_doubt_wipes_nothing() {
        let (s, path, _) = fresh("mftbitmap");
        // ntfs-3g grows the MFT to 65 records for one more file, in
        // record 64: records 27..63 are formatted and free.
        let local = s.path("a");
        std::fs::write(&local, noise(1, 300)).expect("write file");
        run("ntfscp", &["-f", &path, &local, "/a"]);
        let img = std::fs::read(&path).expect("read image");
        let (cs, rs, mft) = layout(&img);
        assert_eq!(&img[2 * cs..2 * cs + 9], &[0xFF, 0xFF, 0, 7, 0, 0, 0, 0, 1], "unexpected $MFT $BITMAP");
        let rec = |n: usize| (mft + n * rs) as u64;
        let plain = used_map(&img);
        for n in [27, 63] {
            assert_eq!(
                plain.used_in(rec(n), rs as u64).collect::<Vec<_>>(),
                vec![
                    (rec(n), rec(n) + 0x32),
                    (rec(n) + 0x36, rec(n) + 0x38),
                    (rec(n) + 510, rec(n) + 512),
                    (rec(n) + 1022, rec(n) + 1024),
                ]
            );
        }
        // System, reserved and in-use records are never touched.
        assert_eq!(plain.used_in(rec(0), 27 * rs as u64).map(|(s, e)| e - s).sum::<u64>(), 27 * rs as u64);
        assert!(plain.used_in(rec(64), rs as u64).eq([(rec(64), rec(65))]));
        // Record 3 marked free in the $MFT's $BITMAP (at LCN 2): all kept.
        let mut doubt = img.clone();
        doubt[2 * cs] &= !(1 << 3);
        let m = used_map(&doubt);
        assert!(m.used_in(rec(0), 65 * rs as u64).eq([(rec(0), rec(65))]));
        assert_eq!(m.used_bytes(), plain.used_bytes() + 37 * (rs as u64 - 0x32 - 2 - 2 - 2));
    }

    #[test]
    fn bitmap_freeing_the_mft_is_whole() {
        let (_s, path, mut img) = fresh("bitmap");
        let (cs, _, mft) = layout(&img);
        let mft_lcn = mft / cs;
        let at = first_lcn(&path, 6) * cs + mft_lcn / 8;
        img[at] &= !(1 << (mft_lcn % 8));
        assert!(whole(&img).contains("marks its own metadata free"), "{}", whole(&img));
    }

    /// Random damage to the metadata never panics the reader.
    #[test]
    fn mutated_images_never_panic() {
        let (_s, path, img) = fresh("mutate");
        let (cs, _, mft) = layout(&img);
        let targets = [0, mft, le_u64(&img, 0x38) as usize * cs, first_lcn(&path, 6) * cs];
        let mut x = 0x1234_5678_9ABC_DEF1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut mapped, mut whole) = (0, 0);
        let mut m = img;
        for round in 0..400 {
            // Into the boot sector, the first 16 MFT records, the mirror or
            // the start of the bitmap; undone after each round.
            let mut undo = Vec::new();
            for _ in 0..1 + round % 4 {
                let at = targets[(next() % 4) as usize] + (next() % (16 * 1024)) as usize;
                undo.push((at, m[at]));
                m[at] = next() as u8;
            }
            match verdict(&m).0 {
                Verdict::UsedOnly(_) => mapped += 1,
                Verdict::Whole(_) => whole += 1,
            }
            for &(at, b) in undo.iter().rev() {
                m[at] = b;
            }
        }
        assert!(mapped > 0 && whole > 0, "{mapped} mapped, {whole} whole");
    }

    /// A 4 KiB log restart page (version 1.1) with the given restart flags.
    fn restart_page(flags: u16, lsn: u64) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[..4].copy_from_slice(b"RSTR");
        p[4..6].copy_from_slice(&0x1Eu16.to_le_bytes());
        p[6..8].copy_from_slice(&9u16.to_le_bytes());
        p[0x10..0x14].copy_from_slice(&4096u32.to_le_bytes());
        p[0x14..0x18].copy_from_slice(&4096u32.to_le_bytes());
        p[0x18..0x1A].copy_from_slice(&0x40u16.to_le_bytes());
        p[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes());
        p[0x1C..0x1E].copy_from_slice(&1u16.to_le_bytes());
        p[0x40..0x48].copy_from_slice(&lsn.to_le_bytes());
        p[0x48..0x4A].copy_from_slice(&1u16.to_le_bytes()); // one client
        p[0x4A..0x4C].copy_from_slice(&0xFFFFu16.to_le_bytes()); // free list empty
        p[0x4C..0x4E].copy_from_slice(&0u16.to_le_bytes()); // client 0 in use
        p[0x4E..0x50].copy_from_slice(&flags.to_le_bytes());
        // Protect it: the sequence number 1 ends every 512-byte block.
        p[0x1E..0x20].copy_from_slice(&1u16.to_le_bytes());
        for k in 0..8 {
            let e = (k + 1) * 512 - 2;
            p.copy_within(e..e + 2, 0x20 + 2 * k);
            p[e..e + 2].copy_from_slice(&1u16.to_le_bytes());
        }
        p
    }

    #[test]
    fn unclean_logfile_is_whole() {
        let (_s, path, img) = fresh("log");
        let (cs, _, _) = layout(&img);
        let log = first_lcn(&path, 2) * cs;
        let with = |first: Vec<u8>, second: Vec<u8>| {
            let mut i = img.clone();
            i[log..log + 4096].copy_from_slice(&first);
            i[log + 4096..log + 8192].copy_from_slice(&second);
            verdict(&i).0
        };
        // Both restart areas clean, or the newer one clean: the map is read.
        assert!(matches!(with(restart_page(2, 10), restart_page(2, 10)), Verdict::UsedOnly(_)));
        assert!(matches!(with(restart_page(0, 10), restart_page(2, 11)), Verdict::UsedOnly(_)));
        // The newer one not clean (hibernation, fast start-up).
        for v in [with(restart_page(0, 10), restart_page(0, 10)), with(restart_page(0, 12), restart_page(2, 11))] {
            assert!(matches!(&v, Verdict::Whole(w) if w.contains("hibernated")), "{v:?}");
        }
        // A torn restart page, a chkdsk-modified one, or log records without one.
        let mut torn = restart_page(2, 10);
        torn[1023] = 9;
        assert!(matches!(with(torn, restart_page(2, 10)), Verdict::Whole(w) if w.contains("update sequence")));
        let mut chkd = restart_page(2, 10);
        chkd[..4].copy_from_slice(b"CHKD");
        assert!(matches!(with(chkd, restart_page(2, 10)), Verdict::Whole(w) if w.contains("chkdsk")));
        let mut junk = vec![0u8; 4096];
        junk[..4].copy_from_slice(b"RCRD");
        assert!(matches!(with(junk, vec![0xFF; 4096]), Verdict::Whole(w) if w.contains("neither empty")));
    }
}

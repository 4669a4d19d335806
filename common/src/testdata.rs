//! Deterministic test data for the tests and benchmarks of every crate.

/// `len` pseudo-random bytes from a xorshift64 generator: the same `seed`
/// gives the same bytes, different seeds give different bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    // xorshift must not start at 0; map seeds injectively to odd states.
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The first file under `dir` (recursively) whose bytes contain `needle`:
/// what the tests use to show a store holds no plain text.
pub fn file_holding(dir: &std::path::Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
                return Some(p);
            }
        }
    }
    None
}

/// A manifest of 4096-byte chunks named "full" for PC `pc`, for tests
/// that need a backup on the server without a disk behind it.
pub fn manifest_of(pc: &str, chunks: Vec<crate::image::Chunk>) -> crate::image::Manifest {
    crate::image::Manifest {
        created: 1,
        chunk_size: 4096,
        disk_bytes: 4096 * chunks.len() as u64,
        logical: 512,
        physical: 512,
        table: crate::image::TableKind::None,
        pc: pc.into(),
        name: "full".into(),
        model: String::new(),
        serial: String::new(),
        extents: vec![],
        partitions: Vec::new(),
        quick: Vec::new(),
        sealed: None,
        chunks,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deterministic_and_distinct() {
        assert_eq!(super::noise(5, 64), super::noise(5, 64));
        assert_ne!(super::noise(100, 64), super::noise(101, 64));
        assert_ne!(super::noise(0, 64), vec![0u8; 64]);
    }
}

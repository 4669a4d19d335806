//! `bootvault gc` through the real binary: it says which open uploads held
//! it back instead of silently removing nothing.

use std::process::Command;

use bootvault_server::vault::Vault;

#[test]
fn gc_names_the_open_uploads_that_hold_it_back() {
    let data = std::env::temp_dir().join(format!("bv-gc-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let v = Vault::open(&data).expect("vault");
    let plain = bootvault_common::testdata::noise(1, 4096);
    let (cid, blob) = (bootvault_common::image::chunk_id(&plain), bootvault_common::image::encode_blob(&plain, 1));
    let id = v.create_backup("lab-1", "nightly", 8192, 4096).expect("upload");
    v.put_chunk(&cid, &blob, Some(id)).expect("chunk");
    drop(v);
    let out = Command::new(env!("CARGO_BIN_EXE_bootvault")).arg("gc").arg("--data").arg(&data).output().expect("gc");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("0 chunks removed"), "{text}");
    assert!(text.contains("1 unreferenced chunks kept"), "{text}");
    assert!(text.contains(&format!("upload {id} of PC lab-1 is open")), "{text}");
    let _ = std::fs::remove_dir_all(&data);
}

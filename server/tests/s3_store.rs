//! The chunk store on S3 against a real S3 store: a single-node Garage
//! each test starts (`make garage` builds it once). Blobs and manifests
//! round trip, gets over their limit are refused, a touch moves
//! LastModified only past its skip, lists page past 1000 keys, a wrong
//! secret is refused with S3's own words, virtual-hosted addressing works,
//! and a whole vault backs up, reads back and collects garbage over it.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use bootvault_common::image::{self, Chunk, ChunkId};
use bootvault_server::blobs::{self, BlobStore};
use bootvault_server::blobs_s3::S3BlobStore;
use bootvault_server::db::sqlite::SqliteDb;
use bootvault_server::s3::{Addressing, Endpoint, S3Client};
use bootvault_server::testenv_s3::Garage;
use bootvault_server::vault::Vault;

/// gc's margin for this test binary, set once before any test reads it
/// (every test calls this first, so no test reads the environment while
/// it changes).
fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("BOOTVAULT_GC_MARGIN", "6"));
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bv-s3-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn garage(dir: &std::path::Path) -> Garage {
    Garage::start(&dir.join("garage")).unwrap_or_else(|e| panic!("starting garage: {e:#}"))
}

fn store(g: &Garage, prefix: &str) -> S3BlobStore {
    S3BlobStore::with_client(S3Client::new(g.config(prefix).unwrap())).unwrap()
}

/// A chunk from a seed: (id, blob).
fn chunk(seed: u64) -> (ChunkId, Vec<u8>) {
    let plain = bootvault_common::testdata::noise(seed, 4096);
    (image::chunk_id(&plain), image::encode_blob(&plain, 1))
}

#[test]
fn blobs_and_manifests_round_trip() {
    init();
    let dir = temp("blobs");
    let g = garage(&dir);
    let s = store(&g, "site-a");
    let (id, blob) = chunk(1);
    assert_eq!(s.len(&id).unwrap(), None);
    assert_eq!(s.touch(&id, 0).unwrap(), None, "touching a missing chunk stores nothing");
    s.put(&blobs::verify(&id, &blob).unwrap()).unwrap();
    assert_eq!(s.len(&id).unwrap(), Some(blob.len() as u32));
    assert_eq!(s.get(&id, blob.len() as u64).unwrap(), blob);
    let e = format!("{:#}", s.get(&id, blob.len() as u64 - 1).unwrap_err());
    assert!(e.contains(&format!("{} bytes, over {}", blob.len(), blob.len() - 1)), "{e}");
    // Where it is: the data directory's layout under the prefix.
    let h = image::hex(&id);
    let key = format!("site-a/chunks/{}/{h}", &h[..2]);
    assert_eq!(s.chunk_key(&id), key);
    assert_eq!(s.client().head_object(&key).unwrap().unwrap().len, blob.len() as u64);
    // Another prefix is another store.
    assert_eq!(store(&g, "site-b").len(&id).unwrap(), None);
    assert!(s.delete(&id).unwrap());
    assert!(!s.delete(&id).unwrap());
    assert_eq!(s.len(&id).unwrap(), None);
    let e = format!("{:#}", s.get(&id, u64::MAX).unwrap_err());
    assert!(e.contains("is not in the store"), "{e}");

    s.put_manifest(7, b"manifest seven").unwrap();
    assert_eq!(s.manifest(7).unwrap(), b"manifest seven");
    assert_eq!(s.client().head_object("site-a/manifests/7.bvm").unwrap().unwrap().len, 14);
    s.delete_manifest(7);
    let e = format!("{:#}", s.manifest(7).unwrap_err());
    assert!(e.contains("manifest of backup 7") && e.contains("site-a/manifests/7.bvm"), "{e}");
    s.delete_manifest(7);
    drop(g);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_touch_moves_last_modified_only_past_its_skip() {
    init();
    let dir = temp("touch");
    let g = garage(&dir);
    let s = store(&g, "");
    let (id, blob) = chunk(2);
    s.put(&blobs::verify(&id, &blob).unwrap()).unwrap();
    let key = s.chunk_key(&id);
    let first = s.client().head_object(&key).unwrap().unwrap().last_modified;
    // LastModified counts whole seconds: let one pass.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(s.touch(&id, 3600).unwrap(), Some(blob.len() as u32));
    assert_eq!(s.client().head_object(&key).unwrap().unwrap().last_modified, first, "within the skip: untouched");
    assert_eq!(s.touch(&id, 1).unwrap(), Some(blob.len() as u32));
    let touched = s.client().head_object(&key).unwrap().unwrap().last_modified;
    assert!(touched >= first + 2, "a touch past the skip moves LastModified: {first} -> {touched}");
    // gc sees the mark; the bytes are the same.
    let listed = s.list(&image::hex(&id)[..2]).unwrap();
    assert_eq!(
        listed.iter().map(|b| (b.id, b.touched, b.len)).collect::<Vec<_>>(),
        [(Some(id), touched, blob.len() as u64)]
    );
    assert_eq!(s.get(&id, u64::MAX).unwrap(), blob);
    drop(g);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn lists_page_past_1000_keys_in_a_group() {
    init();
    let dir = temp("list");
    let g = garage(&dir);
    let s = store(&g, "p");
    // 1005 chunk names in group ab (the bytes do not matter to a list),
    // one stray key, one key in the next group.
    let names: Vec<String> = (0..1005u32).map(|i| format!("ab{i:062x}")).collect();
    std::thread::scope(|scope| {
        for part in names.chunks(names.len().div_ceil(8)) {
            let s = &s;
            scope.spawn(move || {
                for n in part {
                    s.client().put_object(&format!("p/chunks/ab/{n}"), n.as_bytes()).unwrap();
                }
            });
        }
    });
    s.client().put_object("p/chunks/ab/left-by-hand", b"x").unwrap();
    s.client().put_object("p/chunks/ac/ac00", b"y").unwrap();
    let page = s.client().list_page("p/chunks/ab/", None).unwrap();
    assert_eq!(page.objects.len(), 1000);
    assert!(page.next.is_some(), "a second page");
    let mut listed = s.list("ab").unwrap();
    assert_eq!(listed.len(), 1006);
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    assert!(listed[..1005]
        .iter()
        .zip(&names)
        .all(|(b, n)| b.id == image::parse_hex(n) && b.id.is_some() && b.len == 64));
    assert_eq!((listed[1005].key.as_str(), listed[1005].id), ("p/chunks/ab/left-by-hand", None));
    assert_eq!(s.groups().unwrap().len(), 256);
    assert_eq!(s.list("ac").unwrap().len(), 1);
    assert!(s.list("ad").unwrap().is_empty());
    s.remove(&listed[1005]).unwrap();
    assert_eq!(s.list("ab").unwrap().len(), 1005);
    assert!(s.list("../x").is_err());
    drop(g);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_secret_is_refused_with_s3s_words_and_virtual_hosting_works() {
    init();
    let dir = temp("auth");
    let g = garage(&dir);
    let mut c = g.config("x").unwrap();
    c.credentials.secret_access_key = "0".repeat(64);
    let e = format!("{:#}", S3BlobStore::with_client(S3Client::new(c.clone())).err().unwrap());
    println!("wrong secret: {e}");
    assert!(e.contains("S3 ListObjectsV2 s3://bootvault/") && e.contains(" 403 "), "{e}");
    assert!(!e.contains(&"0".repeat(64)) && !e.contains(g.secret_access_key()) && !e.contains('\n'), "{e}");
    c.credentials.access_key_id = "GK000000000000000000000000".into();
    let e = format!("{:#}", S3BlobStore::with_client(S3Client::new(c)).err().unwrap());
    println!("unknown key: {e}");
    assert!(e.contains(" 403 "), "{e}");

    // bootvault.localhost:PORT, the bucket in the host name.
    let mut c = g.config("v").unwrap();
    c.endpoint = Endpoint::parse(&g.localhost_endpoint()).unwrap();
    c.addressing = Addressing::Virtual;
    let target = c.target(Some("v/k"), &[]);
    assert!(target.url.starts_with("http://bootvault.localhost:"), "{}", target.url);
    let s = S3BlobStore::with_client(S3Client::new(c)).unwrap();
    let (id, blob) = chunk(3);
    s.put(&blobs::verify(&id, &blob).unwrap()).unwrap();
    assert_eq!(store(&g, "v").get(&id, u64::MAX).unwrap(), blob, "the same object path-style");
    drop(g);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_vault_over_s3_backs_up_reads_back_and_collects() {
    init();
    let dir = temp("vault");
    let g = garage(&dir);
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    let db = SqliteDb::open(&data.join("bootvault.db")).unwrap();
    let v = Vault::with(&data, Box::new(db), Box::new(store(&g, "vault"))).unwrap();

    let seeds = [10u64, 11, 12];
    let chunks: Vec<Chunk> = seeds
        .iter()
        .map(|s| {
            let (id, blob) = chunk(*s);
            Chunk::Data { id, blob_len: blob.len() as u32 }
        })
        .collect();
    let m = bootvault_common::testdata::manifest_of("pc1", chunks);
    let id = v.create_backup("pc1", "full", m.disk_bytes, 4096).unwrap();
    let ids: Vec<ChunkId> = seeds.iter().map(|s| chunk(*s).0).collect();
    assert_eq!(v.missing(id, None, &ids).unwrap(), [0, 0, 0]);
    for s in seeds {
        let (cid, blob) = chunk(s);
        assert!(v.put_chunk(&cid, &blob, Some(id)).unwrap());
    }
    let answers = v.missing(id, None, &ids).unwrap();
    assert!(answers.iter().all(|l| *l > 0), "{answers:?}");
    let row = v.finish_backup(id, "pc1", &m.encode()).unwrap();
    assert_eq!(row.state, "complete");
    assert_eq!(v.manifest(id).unwrap(), m.encode());
    for s in seeds {
        let (cid, blob) = chunk(s);
        assert_eq!(v.chunk(&cid).unwrap(), blob);
    }
    assert_eq!(v.verify_backup(id).unwrap(), 3);

    // An unreferenced chunk: kept while recent, removed once older than
    // the margin (6 s here); the backup's chunks are kept.
    let (loose, loose_blob) = chunk(99);
    v.put_chunk(&loose, &loose_blob, None).unwrap();
    let r = v.gc(3600).unwrap();
    assert_eq!((r.chunks_removed, r.chunks_kept, r.recent_kept), (0, 3, 1));
    std::thread::sleep(Duration::from_secs(8));
    let r = v.gc(3600).unwrap();
    assert_eq!((r.chunks_removed, r.chunks_kept, r.recent_kept, r.bytes_freed), (1, 3, 0, loose_blob.len() as u64));
    assert_eq!(v.blob_len(&loose), None);
    v.verify_backup(id).unwrap();
    // The backup deleted, its chunks and manifest go too.
    v.delete_backup(id).unwrap();
    let r = v.gc(3600).unwrap();
    assert_eq!(r.chunks_removed, 3);
    let s = store(&g, "vault");
    assert!(s.client().list("vault/").unwrap().is_empty(), "nothing left under the prefix");
    drop(v);
    drop(g);
    let _ = fs::remove_dir_all(&dir);
}

#![no_main]
//! The server's job for a PC (`GET /api/v1/jobs/next`), as the init reads
//! it: never panics; a job it accepts passes its own checks, writes back
//! (`encode`) and reads again as the same job, and no accepted value can
//! carry a line of its own.
use bootvault_common::job::JobMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(job) = JobMessage::parse(text) else { return };
    assert!(job.check().is_ok(), "{job:?}");
    for v in [&job.disk, &job.name, &job.lock, &job.ticket].into_iter().flatten() {
        assert!(!v.contains('\n') && !v.contains('\r'), "{job:?}");
    }
    let encoded = job.encode().expect("an accepted job encodes");
    assert_eq!(JobMessage::parse(&encoded).as_ref(), Ok(&job), "{encoded:?}");
    assert_eq!(encoded.lines().count(), encoded.matches('\n').count());
});

//! The network thread's filter, installed for real: a syscall the VMM
//! thread's filter lets through (`ftruncate`, which sizes the snapshot
//! memory file) kills a thread under the net filter, and the SIGSYS note
//! names the syscall and the `net` thread. Each case runs in a child
//! process (this test binary, re-run on just that test), since a filter
//! cannot be taken off again and the trap ends the process.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use super::{compile_kind, install_reporter, SeccompViolation, ThreadKind, DEATH_NOTE_LEN};

/// Set in the child; names the thread kind whose filter it applies.
const CHILD_KIND: &str = "SBXRUN_SECCOMP_TEST_KIND";

/// How a child that made the attempt ended.
#[derive(Debug, PartialEq, Eq)]
enum ChildOutcome {
    /// The attempt got through and the test passed in the child.
    Allowed,
    /// The filter trapped; the reporter's note, decoded.
    Trapped(SeccompViolation),
}

/// In the child (`CHILD_KIND` set): applies that kind's filter to this
/// thread, reports traps on stdout, and runs `attempt`; returns true.
/// In the parent: returns false.
fn as_filtered_child(attempt: impl FnOnce()) -> bool {
    let Some(kind) = std::env::var_os(CHILD_KIND) else {
        return false;
    };
    let kind = match kind.to_str() {
        Some("vmm") => ThreadKind::Vmm,
        Some("net") => ThreadKind::Net,
        other => panic!("unknown kind {other:?}"),
    };
    let filter = compile_kind(kind).expect("compile");
    // Flush what the harness printed so the note is the last thing on stdout.
    std::io::stdout().flush().expect("flush");
    // SAFETY: dup of our own stdout; the new descriptor is owned by the
    // OwnedFd and handed to the reporter, which keeps it open.
    let note_fd = unsafe { OwnedFd::from_raw_fd(libc::dup(std::io::stdout().as_raw_fd())) };
    install_reporter(note_fd).expect("reporter");
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and only affects
    // this process (a child made for this test).
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    assert_eq!(r, 0, "no_new_privs");
    filter.apply().expect("apply");
    attempt();
    true
}

/// Re-runs test `name` in a child under `kind`'s filter.
fn run_child(name: &str, kind: &str) -> ChildOutcome {
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", name, "--test-threads=1", "--quiet"])
        .env(CHILD_KIND, kind)
        .env_remove("SBXRUN_SECCOMP_LOG")
        .output()
        .expect("run the child");
    if out.status.success() {
        return ChildOutcome::Allowed;
    }
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGSYS),
        "child neither passed nor trapped: {out:?}"
    );
    let at = out
        .stdout
        .len()
        .checked_sub(DEATH_NOTE_LEN)
        .expect("no note from the SIGSYS reporter");
    let note: [u8; DEATH_NOTE_LEN] = out.stdout[at..].try_into().expect("note");
    ChildOutcome::Trapped(SeccompViolation::decode(note))
}

/// A file opened (with `openat`) before any filter is applied.
fn tempfile_in_tmp() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("sbxrun-net-seccomp-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("temp file");
    let _ = std::fs::remove_file(&path);
    file
}

#[test]
fn the_vmm_filter_lets_a_snapshot_file_be_sized() {
    let file = tempfile_in_tmp();
    if as_filtered_child(|| {
        // SAFETY: ftruncate on a descriptor we own, with a plain length.
        let r = unsafe { libc::ftruncate(file.as_raw_fd(), 4096) };
        assert_eq!(r, 0, "ftruncate: {}", std::io::Error::last_os_error());
    }) {
        return;
    }
    assert_eq!(
        run_child(
            "seccomp::net_tests::the_vmm_filter_lets_a_snapshot_file_be_sized",
            "vmm"
        ),
        ChildOutcome::Allowed
    );
}

#[test]
fn the_net_filter_kills_a_snapshot_syscall_and_names_the_net_thread() {
    let file = tempfile_in_tmp();
    if as_filtered_child(|| {
        // SAFETY: ftruncate on a descriptor we own, with a plain length.
        let r = unsafe { libc::ftruncate(file.as_raw_fd(), 4096) };
        panic!("ftruncate got through the net filter: {r}");
    }) {
        return;
    }
    assert_eq!(
        run_child(
            "seccomp::net_tests::the_net_filter_kills_a_snapshot_syscall_and_names_the_net_thread",
            "net"
        ),
        ChildOutcome::Trapped(SeccompViolation {
            syscall: Some(libc::SYS_ftruncate),
            thread: Some(ThreadKind::Net),
        })
    );
}

#[test]
fn the_net_filter_kills_an_open_of_a_host_file() {
    if as_filtered_child(|| {
        let r = crate::selftest::Probe::OpenHostFile.attempt();
        panic!("open got through the net filter: {r:?}");
    }) {
        return;
    }
    assert_eq!(
        run_child(
            "seccomp::net_tests::the_net_filter_kills_an_open_of_a_host_file",
            "net"
        ),
        ChildOutcome::Trapped(SeccompViolation {
            syscall: Some(libc::SYS_openat),
            thread: Some(ThreadKind::Net),
        })
    );
}

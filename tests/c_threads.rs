//! rampart as a multi-threaded C program's malloc (preloaded): `fork()` while other threads
//! allocate (`tests/c/fork.c`), 10,000 short-lived threads whose heaps must be reused
//! (`tests/c/churn.c`), and thread-local storage of a `dlopen`ed library, which glibc
//! allocates with malloc (`tests/c/dlopen_tls.c`, `tests/c/tls_lib.c`).
//!
//! Each C program has its own watchdog (`alarm`), and the test kills it after
//! [`WATCHDOG`] too, so a deadlock fails the test instead of hanging it. Nothing asserts a
//! time.

mod c_support;

use c_support::{gcc, heap_counts, preloaded, run, WATCHDOG};

#[global_allocator]
static GLOBAL: rampart::Rampart = rampart::Rampart;

#[test]
fn fork_while_threads_allocate() {
    let prog = gcc("fork", &["tests/c/fork.c", "-lpthread"]);
    let out = run(preloaded(&prog), WATCHDOG);
    out.assert_success();
    assert!(
        out.stdout.contains("fork: 100 forks, 0 failed"),
        "{}",
        out.describe()
    );
}

#[test]
fn thread_churn_reuses_heaps_and_memory() {
    let prog = gcc("churn", &["tests/c/churn.c", "-lpthread"]);
    let mut cmd = preloaded(&prog);
    cmd.env("RAMPART_STATS", "1");
    let out = run(cmd, WATCHDOG);
    // The program itself fails (status 1) when the final RSS exceeds
    // max(2 x early, early + 64 MiB) or a block was damaged; it prints the figures.
    out.assert_success();
    println!(
        "{}",
        out.stdout
            .lines()
            .find(|l| l.starts_with("churn:"))
            .unwrap_or("")
    );
    assert!(
        out.stdout.contains("churn: threads 10000,"),
        "{}",
        out.describe()
    );
    let Some((created, reused)) = heap_counts(&out.stderr) else {
        panic!(
            "no \"thread heaps N created, M reused\" line in the statistics\n{}",
            out.describe()
        );
    };
    println!("thread heaps: {created} created, {reused} reused");
    // At most 50 threads (plus the main thread) live at once, so a few hundred heaps at
    // the very most; each of the other threads must have adopted a parked heap.
    assert!(
        created <= 500 && created + reused >= 10_000,
        "10,000 threads made {created} heaps and reused {reused}: heaps of exited threads \
         are not being reused\n{}",
        out.describe()
    );
}

#[test]
fn dlopen_library_with_thread_locals() {
    let lib = gcc("libtls_lib.so", &["-shared", "-fPIC", "tests/c/tls_lib.c"]);
    let prog = gcc("dlopen_tls", &["tests/c/dlopen_tls.c", "-lpthread", "-ldl"]);
    let mut cmd = preloaded(&prog);
    cmd.arg(&lib);
    let out = run(cmd, WATCHDOG);
    out.assert_success();
    assert!(
        out.stdout
            .contains("dlopen_tls: 50 rounds of 8 threads, 0 failures"),
        "{}",
        out.describe()
    );
}

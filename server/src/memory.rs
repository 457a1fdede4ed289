//! Process-wide memory settings, applied once at start-up before any worker thread exists.
//!
//! Measured with `bench/` (peak RSS over all scenarios, SQLite): the defaults of the allocator
//! and the kernel roughly doubled Weft's resident memory for the same heap, which itself peaks
//! around 15 MiB. See docs/performance.md.

/// `mi_option_purge_delay` in mimalloc.h (the same value in mimalloc v2 and v3);
/// libmimalloc-sys does not export a constant for it under v3.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the settings; an operator's own `MIMALLOC_PURGE_DELAY` is left to win.
pub fn tune_allocator() {
    // mimalloc asks for transparent huge pages on its arenas, so a touched 2 MiB region
    // becomes resident whole; this server's heap is small and scattered over many threads,
    // where 4 KiB pages keep the resident set close to what is in use.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process; no pointers are passed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    // SQLite allocates with the C library's malloc, which gives every thread that allocates its
    // own arena (up to eight per core) and keeps each arena's freed memory. SQLite runs one
    // thread per pooled connection, so one shared arena keeps its page caches and statements
    // from being spread (and retained) across a dozen arenas. `MALLOC_ARENA_MAX` still wins.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc tunable; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
    // Freed pages go back to the system at once instead of after mimalloc's default one
    // second: a burst (a large sync response, a password hash) then leaves no resident tail,
    // and the peak stays near the live heap. The cost is a few more madvise calls.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; called before other threads allocate.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

//! What the gateway keeps resident. Its resident set is mostly code: the
//! binary's text and libc's, mapped in 64 KiB chunks as they are first run
//! (the kernel's fault-around), and start-up touches far more of it than a
//! running gateway needs (the config parser, the schema check, the CLI,
//! TLS set-up). Once started, the gateway lets go of its read-only file
//! pages; what runs next maps its pages again from the page cache (a minor
//! fault, no I/O), so what stays resident is the code in use. Pages that
//! differ from the file (relocated data, the heap, stacks) are never
//! touched.

use std::time::Duration;

/// When the first release comes: start-up is over by then.
pub const FIRST_RELEASE: Duration = Duration::from_secs(30);
/// And the next ones: code run once in a while (a reconnect, a new
/// configuration) does not stay resident for good.
pub const RELEASE_EVERY: Duration = Duration::from_secs(3_600);

/// A mapping of this process, as `/proc/self/smaps` describes it.
#[derive(Debug, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    writable: bool,
    /// Backed by a file (an inode), not anonymous memory or a kernel page.
    file: bool,
    rss_kb: u64,
    /// Pages copied on write (relocations): these must be kept.
    anonymous_kb: u64,
}

impl Mapping {
    /// Read-only pages that all equal the file: dropping them loses nothing.
    fn releasable(&self) -> bool {
        self.file && !self.writable && self.anonymous_kb == 0 && self.rss_kb > 0
    }
}

fn mappings(smaps: &str) -> Vec<Mapping> {
    let mut all: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-') {
            // A header: "start-end perms offset dev inode [path]".
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let inode = fields.nth(2).unwrap_or("0");
            all.push(Mapping {
                start,
                end,
                writable: perms.contains('w'),
                file: inode != "0",
                rss_kb: 0,
                anonymous_kb: 0,
            });
        } else if let Some(current) = all.last_mut() {
            let kb = || fields.clone().next().and_then(|v| v.parse().ok());
            match first {
                "Rss:" => current.rss_kb = kb().unwrap_or(0),
                // Unknown: keep the mapping.
                "Anonymous:" => current.anonymous_kb = kb().unwrap_or(u64::MAX),
                _ => {}
            }
        }
    }
    all
}

/// Lets go of the read-only file pages of this process; says how many
/// kilobytes were resident in them.
#[cfg(target_os = "linux")]
pub fn release_code() -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = 0;
    for mapping in mappings(&smaps).iter().filter(|m| m.releasable()) {
        // SAFETY: the range is a whole mapping of this process, read-only
        // and without a page of its own (Anonymous: 0), so every page is
        // the file's and the next access reads the same bytes back from
        // the page cache. Nothing here maps or unmaps memory meanwhile.
        let rc = unsafe {
            libc::madvise(
                mapping.start as *mut libc::c_void,
                mapping.end - mapping.start,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            released += mapping.rss_kb;
        }
    }
    Ok(released)
}

#[cfg(not(target_os = "linux"))]
pub fn release_code() -> std::io::Result<u64> {
    Ok(0)
}

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and each keeps freed memory for reuse: with a handful of threads that is
/// most of the heap's RSS. Two arenas serve the runtime and the store thread
/// without contention worth measuring. Same as `MALLOC_ARENA_MAX=2`, which,
/// when set, wins. To be called first thing, before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tunables; the caller
        // calls it before any other thread of this process exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas() {}

/// Releases the code pages after start-up, then now and then; forever.
pub async fn keep_trim() {
    let mut next = FIRST_RELEASE;
    loop {
        tokio::time::sleep(next).await;
        match release_code() {
            Ok(kb) => tracing::debug!("released {kb} kB of code pages"),
            Err(e) => tracing::debug!("cannot release code pages: {e}"),
        }
        next = RELEASE_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r--p 00000000 08:01 1234 /usr/bin/fieldgate
Size:               2048 kB
Rss:                1216 kB
Anonymous:             0 kB
55d0c0200000-55d0c0700000 r-xp 00200000 08:01 1234 /usr/bin/fieldgate
Rss:                4856 kB
Anonymous:             0 kB
55d0c0700000-55d0c0740000 r--p 00700000 08:01 1234 /usr/bin/fieldgate
Rss:                 276 kB
Anonymous:           200 kB
55d0c0740000-55d0c0746000 rw-p 00740000 08:01 1234 /usr/bin/fieldgate
Rss:                  24 kB
Anonymous:            24 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Rss:                 804 kB
Anonymous:           804 kB
7f0000000000-7f0000008000 rw-s 00000000 08:01 99 /var/lib/fieldgate/fieldgate.db-shm
Rss:                  32 kB
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_file_pages_that_equal_the_file_are_released() {
        let all = mappings(SMAPS);
        assert_eq!(all.len(), 7);
        assert_eq!(
            all[1],
            Mapping {
                start: 0x55d0c0200000,
                end: 0x55d0c0700000,
                writable: false,
                file: true,
                rss_kb: 4856,
                anonymous_kb: 0,
            }
        );
        let released: Vec<u64> = all
            .iter()
            .filter(|m| m.releasable())
            .map(|m| m.rss_kb)
            .collect();
        // The text and the read-only data; not the relocated part, the
        // data, the heap, the shared database index or the vDSO.
        assert_eq!(released, [1216, 4856]);
    }

    fn rss_file_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_shrinks_this_process_and_it_runs_on() {
        let before = rss_file_kb();
        let released = release_code().unwrap_or(0);
        let after = rss_file_kb();
        assert!(
            released > 0 && after < before,
            "{before} kB → {after} kB, {released} kB released"
        );
        // The code runs on, mapped again as it is used.
        let text: String = (0..1_000).map(|i| format!("{i},")).collect();
        assert!(text.starts_with("0,1,2,") && rss_file_kb() > 0);
    }
}

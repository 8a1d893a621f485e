//! A process's memory as /proc tells it, and the one number for whether
//! it keeps growing: shared by the benchmarks that watch the bot.

/// RSS, anonymous and file-backed, in MiB, from one read of
/// /proc/<pid>/status. Anonymous is what the process allocated (heap,
/// stacks); file-backed is the pages it maps of its binary and libraries
/// (clean, shared with the page cache, reclaimable).
pub fn rss(pid: u32) -> [f64; 3] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    ["VmRSS:", "RssAnon:", "RssFile:"].map(|field| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0.0, |kib| kib as f64 / 1024.0)
    })
}

pub fn show([total, anon, file]: [f64; 3]) -> String {
    format!("{total:.1} MiB (anonymous {anon:.1}, file-backed {file:.1})")
}

/// The least-squares slope of `points` (commands, MiB), in MB per 1,000
/// commands: one number for "does it keep growing", which single readings
/// cannot give when sled's cache and write buffers swing by a megabyte or
/// two from one moment to the next.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), p| {
        (a + (p.0 - mx) * (p.1 - my), b + (p.0 - mx).powi(2))
    });
    sxy / sxx * 1000.0 * 1.048_576
}

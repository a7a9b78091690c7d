//! What the machine is and how much memory the process holds, from `/proc`.

fn field_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resident set size of this process in bytes (`VmRSS`), 0 if unknown.
pub fn rss_bytes() -> u64 {
    field_kib("/proc/self/status", "VmRSS:").unwrap_or(0) * 1024
}

/// Peak resident set size of this process in bytes (`VmHWM`), 0 if unknown.
pub fn peak_rss_bytes() -> u64 {
    field_kib("/proc/self/status", "VmHWM:").unwrap_or(0) * 1024
}

/// Total memory of the machine in bytes, 0 if unknown.
pub fn mem_total_bytes() -> u64 {
    field_kib("/proc/meminfo", "MemTotal:").unwrap_or(0) * 1024
}

/// The CPU model name, from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// Logical CPUs available to the process.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

//! The process's own metrics, read from `/proc/self` when scraped: CPU time, memory,
//! file descriptors, threads and start time under the names every Prometheus client
//! library uses (`process_*`), so stock "process" panels and alerts work unchanged; and
//! `pylon_build_info`, the build this process runs.
//!
//! What it is not: accounting of the node's own resources (connections, streams: see
//! [`crate::resource_metrics`]). Nothing is cached: each scrape reads `/proc` afresh,
//! and on a system without `/proc` the `process_*` families are simply absent.
//!
//! `/proc` formats: proc(5). Times in `/proc/self/stat` are in clock ticks of
//! `USER_HZ`, which Linux fixes at 100 for user space on every architecture Pylon
//! builds for (Prometheus's own procfs reader assumes the same).

use std::path::Path;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`).
const USER_HZ: f64 = 100.0;

/// What one scrape read; a field is `None` when its source could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub threads: Option<u64>,
    /// UNIX time the process started, seconds.
    pub start_time: Option<f64>,
}

impl Sample {
    /// Reads the process at `proc` (`/proc/self`); `proc_stat` is the system's
    /// `/proc/stat` (for the boot time).
    pub fn read(proc: &Path, proc_stat: &Path) -> Sample {
        let text = |name: &str| std::fs::read_to_string(proc.join(name)).ok();
        let stat = text("stat").as_deref().and_then(parse_stat);
        let status = text("status").unwrap_or_default();
        let boot = std::fs::read_to_string(proc_stat)
            .ok()
            .as_deref()
            .and_then(boot_time);
        Sample {
            cpu_seconds: stat.as_ref().map(|s| (s.utime + s.stime) as f64 / USER_HZ),
            // `VmRSS:  10240 kB`
            resident_bytes: status_value(&status, "VmRSS:").map(|k| k * 1024),
            virtual_bytes: stat.as_ref().map(|s| s.vsize),
            open_fds: std::fs::read_dir(proc.join("fd"))
                .ok()
                .map(|d| d.count() as u64),
            max_fds: text("limits").as_deref().and_then(max_open_files),
            threads: status_value(&status, "Threads:"),
            start_time: match (boot, &stat) {
                (Some(boot), Some(s)) => Some(boot as f64 + s.starttime as f64 / USER_HZ),
                _ => None,
            },
        }
    }
}

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

/// Parses `/proc/<pid>/stat`. The second field (the command, in parentheses) may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the command: field 3 (state) is the first; utime is field 14.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
    })
}

/// `btime` of `/proc/stat`: the boot time, UNIX seconds.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime"))
        .and_then(|v| v.trim().parse().ok())
}

/// The number after `key` in `/proc/<pid>/status` (`Threads:  12`, `VmRSS:  10240 kB`).
fn status_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits` (`unlimited` is left out:
/// there is no number to report).
fn max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads `/proc/self` on every scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = Sample::read(Path::new("/proc/self"), Path::new("/proc/stat"));
        if let Some(v) = s.cpu_seconds {
            let m = ConstCounter::new(v);
            m.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, in seconds",
                None,
                m.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<f64>); 6] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size, in bytes",
                s.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size, in bytes",
                s.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                s.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "The soft limit on open file descriptors",
                s.max_fds.map(|v| v as f64),
            ),
            (
                "process_threads",
                "Operating system threads of the process",
                s.threads.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "When the process started, in seconds since the UNIX epoch",
                s.start_time,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let m = ConstGauge::new(v);
                m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Registers the `process_*` collector and `pylon_build_info{version}` (always 1) in
/// `registry` (the root: these names take no prefix).
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(ProcessCollector));
    let build: Family<BuildLabels, Gauge> = Family::default();
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    registry.register(
        "pylon_build_info",
        "The Pylon build running: its version as a label, value 1",
        build,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        // A command with a space and a ')' in it: naive splitting would shift fields.
        let line = "4242 (we ird) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250,
                stime: 50,
                starttime: 123456,
                vsize: 104857600,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None, "truncated");
    }

    #[test]
    fn status_limits_and_boot_time_parse() {
        let status = "Name:\tpylon\nVmSize:\t  204800 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        assert_eq!(status_value(status, "VmRSS:"), Some(10240));
        assert_eq!(status_value(status, "Threads:"), Some(7));
        assert_eq!(status_value(status, "Missing:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(max_open_files(unlimited), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    /// On Linux the live process reads back sane values, and the exposition has every
    /// family under its standard name.
    #[test]
    fn the_live_process_is_read_and_exposed() {
        let proc = Path::new("/proc/self");
        if !proc.exists() {
            return; // no procfs: the families are absent, nothing to check
        }
        let s = Sample::read(proc, Path::new("/proc/stat"));
        assert!(s.resident_bytes.unwrap() > 0);
        assert!(s.virtual_bytes.unwrap() >= s.resident_bytes.unwrap());
        assert!(s.open_fds.unwrap() >= 3);
        assert!(s.threads.unwrap() >= 1);
        assert!(s.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = s.start_time.unwrap();
        assert!(started <= now + 1.0 && started > now - 86_400.0 * 365.0);

        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE process_cpu_seconds counter",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_virtual_memory_bytes gauge",
            "# TYPE process_open_fds gauge",
            "# TYPE process_threads gauge",
            "# TYPE process_start_time_seconds gauge",
            concat!(
                "pylon_build_info{version=\"",
                env!("CARGO_PKG_VERSION"),
                "\"} 1"
            ),
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}

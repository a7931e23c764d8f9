//! Figures every server process exports besides its own: the build-info
//! gauge and the process's resources, registered into the process's
//! injected registry ([`register`]).
//!
//! | metric | what |
//! |---|---|
//! | `cp_info{product, version, git_commit, component, instance_id}` | 1; the incumbent's name (`pkg/metrics/components/cp_info.go`), its `product` label says `Meridian` |
//! | `process_cpu_seconds_total` | user + system CPU time |
//! | `process_resident_memory_bytes`, `process_virtual_memory_bytes` | memory |
//! | `process_open_fds`, `process_max_fds` | file descriptors |
//! | `process_start_time_seconds` | start, unix seconds |
//!
//! The process figures follow the Prometheus client libraries' standard
//! names and are read from `/proc/self` on every scrape (Linux only: on
//! other systems, or when `/proc` is unreadable, they are left out).

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};

/// The commit this binary was built from, when the build knew it
/// (`MERIDIAN_GIT_COMMIT` at compile time), else `unknown`.
pub const GIT_COMMIT: &str = match option_env!("MERIDIAN_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// Registers `cp_info` for `component` (`global` or `zone`) and the
/// process collector in `registry`.
pub fn register(registry: &mut Registry, component: &str, version: &str, instance_id: &str) {
    let info = Info::new(vec![
        ("product".to_string(), "Meridian".to_string()),
        ("version".to_string(), version.to_string()),
        ("git_commit".to_string(), GIT_COMMIT.to_string()),
        ("component".to_string(), component.to_string()),
        ("instance_id".to_string(), instance_id.to_string()),
    ]);
    registry.register("cp", "Meridian control plane build and instance (always 1)", info);
    registry.register_collector(Box::new(ProcessCollector));
}

/// Reads `/proc/self` on each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl ProcessCollector {
    fn encode_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let g = ConstGauge::new(value);
        g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(me) = procfs::process::Process::myself() else { return Ok(()) };
        let Ok(stat) = me.stat() else { return Ok(()) };
        let ticks = procfs::ticks_per_second() as f64;
        let page = procfs::page_size() as f64;
        let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        Self::encode_gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.rss as f64 * page,
        )?;
        Self::encode_gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stat.vsize as f64,
        )?;
        if let Ok(fds) = me.fd_count() {
            Self::encode_gauge(&mut encoder, "process_open_fds", "Number of open file descriptors", fds as f64)?;
        }
        if let Ok(limits) = me.limits()
            && let procfs::process::LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            Self::encode_gauge(&mut encoder, "process_max_fds", "Maximum number of open file descriptors", max as f64)?;
        }
        if let Ok(boot) = procfs::boot_time_secs() {
            let start = boot as f64 + stat.starttime as f64 / ticks;
            Self::encode_gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                start,
            )?;
        }
        Ok(())
    }
}

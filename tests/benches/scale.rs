//! The scale harness (issue 13) as one command: starts a real global (SQLite
//! or PostgreSQL), N raw KDS zones and a real federated zone, measures every
//! row of `meridian_tests::scale::run` with its same-run baseline, prints the
//! table and appends it to BENCHMARKS.md with the command, the machine and the
//! date. Bounded: every wait gives up after `scale::LIMIT`.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p meridian-tests --bench scale -- --zones 100 --gateways 1000 --dataplanes 2000
//! bash tests/pg-env.sh cargo bench -p meridian-tests --bench scale -- --store postgres
//! ```
//!
//! The bench runs the binaries of its own profile (`target/release` here);
//! with debug binaries (`cargo build --workspace --bins`) use
//! `cargo bench --profile dev`. The printed command and the "release build" /
//! "debug build" line follow the profile the bench was built with.
//!
//! Flags (defaults in brackets): `--zones N` [10], `--updates U` [20],
//! `--gateways G` [1000], `--dataplanes D` [1000], `--idle-secs S` [10],
//! `--store sqlite|postgres` [sqlite], `--real-zones` (the N zones are real
//! `meridian-zone` processes, not raw KDS clients), `--no-append` (print only).
//! `--ads-gateways G` runs the zone's xDS rows instead
//! (`meridian_tests::scale_ads`: G gateways as delta-ADS clients of a real
//! federated zone, `--updates` route PUTs, then `--ads-connect C` [1000]
//! gateways connecting at once).

use std::{io::Write, process::Command, time::Duration};

use meridian_tests::{
    Backend,
    scale::{self, Config},
};

fn usage(msg: &str) -> ! {
    eprintln!(
        "scale: {msg}\nusage: scale [--zones N] [--updates U] [--gateways G] [--dataplanes D] [--idle-secs S] \
         [--store sqlite|postgres] [--real-zones] [--no-append]"
    );
    std::process::exit(2);
}

/// `nproc`, CPU model and RAM of this machine.
fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{nproc} CPUs ({model}), {ram_gib:.1} GiB RAM, load average {} at the start", load.join(" "))
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let mut cfg = Config {
        zones: 10,
        updates: 20,
        gateways: 1000,
        dataplanes: 1000,
        idle: Duration::from_secs(10),
        backend: Backend::Sqlite,
        real_zones: false,
    };
    let mut append = true;
    let (mut ads_gateways, mut ads_connect) = (0, 1000);
    // cargo bench passes `--bench` to every bench binary.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut num = |what: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&format!("{flag} needs a number ({what})")))
        };
        match flag.as_str() {
            "--zones" => cfg.zones = num("zones"),
            "--updates" => cfg.updates = num("updates").max(1),
            "--gateways" => cfg.gateways = num("gateways"),
            "--dataplanes" => cfg.dataplanes = num("dataplanes").max(1),
            "--idle-secs" => cfg.idle = Duration::from_secs(num("seconds").max(1) as u64),
            "--store" => {
                cfg.backend = match it.next().map(String::as_str) {
                    Some("sqlite") => Backend::Sqlite,
                    Some("postgres") => Backend::Postgres,
                    other => usage(&format!("--store takes sqlite or postgres, not {other:?}")),
                }
            }
            "--no-append" => append = false,
            "--real-zones" => cfg.real_zones = true,
            "--ads-gateways" => ads_gateways = num("gateways"),
            "--ads-connect" => ads_connect = num("gateways"),
            other => usage(&format!("unknown flag {other:?}")),
        }
    }
    let machine = machine();
    let date = date();
    let ads = meridian_tests::scale_ads::AdsConfig {
        gateways: ads_gateways,
        updates: cfg.updates,
        connect: ads_connect,
        backend: cfg.backend,
    };
    let report = if ads_gateways > 0 {
        scale::Report { config: cfg.clone(), rows: meridian_tests::scale_ads::run(ads).await }
    } else {
        scale::run(cfg.clone()).await
    };
    let cargo_bench = if cfg!(debug_assertions) { "cargo bench --profile dev" } else { "cargo bench" };
    let command = if ads_gateways > 0 {
        format!(
            "{cargo_bench} -p meridian-tests --bench scale -- --ads-gateways {ads_gateways} --ads-connect {ads_connect} --updates {} --store {}",
            cfg.updates,
            cfg.backend.name()
        )
    } else {
        format!(
            "{cargo_bench} -p meridian-tests --bench scale -- --zones {} --updates {} --gateways {} \
         --dataplanes {} --idle-secs {} --store {}{}",
            cfg.zones,
            cfg.updates,
            cfg.gateways,
            cfg.dataplanes,
            cfg.idle.as_secs(),
            cfg.backend.name(),
            if cfg.real_zones { " --real-zones" } else { "" }
        )
    };
    let profile = if cfg!(debug_assertions) { "debug build" } else { "release build" };
    let section =
        format!("\n### Scale run, {date}\n\n```sh\n{command}\n```\n\n{machine}; {profile}.\n\n{}", report.table());
    println!("{section}");
    if append {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        f.write_all(section.as_bytes()).unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
        eprintln!("appended to {}", path.display());
    }
}

//! `/metrics`: the runtime's counters in the Prometheus text exposition format (version
//! 0.0.4): executions by processor and outcome, a duration histogram per processor, what
//! is running, and what is loaded.

use std::fmt::Write;

use weir::{DURATION_BUCKETS_US, ProcessorStats};
use weir::{Runtime, RuntimeState, RuntimeStats};

/// The histogram's bucket edges in µs (`le`, in seconds): from 10 µs to a minute, each one of
/// the runtime's finer bounds ([`DURATION_BUCKETS_US`]), so each count is exact.
const HISTOGRAM_EDGES_US: [u64; 20] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 60_000_000,
];

/// The `Content-Type` of the exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric from `stats` (one snapshot of the counters: this process's, or the
/// fleet's) and what `runtime` has loaded. Built per scrape.
pub(crate) fn render(runtime: &Runtime, stats: &RuntimeStats) -> String {
    let catalog = runtime.catalog();
    let mut out = String::with_capacity(4096 + stats.processors.len() * 2048);
    let up = u64::from(stats.state == RuntimeState::Running);
    for (name, help, value) in [
        ("weir_up", "1 while the runtime accepts work.", up),
        (
            "weir_uptime_seconds",
            "Seconds since the runtime was built.",
            stats.uptime_ms / 1000,
        ),
        (
            "weir_executions_in_flight",
            "Executions running now, workflow steps and nested calls included.",
            stats.running as u64,
        ),
        (
            "weir_sessions_active",
            "Sessions that have seen work and not been stopped.",
            stats.sessions as u64,
        ),
        (
            "weir_plugins_loaded",
            "Plugins loaded and serving.",
            catalog.plugins.len() as u64,
        ),
        (
            "weir_plugins_rejected",
            "Plugin files rejected (GET /v1/plugins says why).",
            catalog.rejected.len() as u64,
        ),
        (
            "weir_workflows",
            "Valid workflows.",
            catalog.workflows.len() as u64,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }

    // Every per-processor family is labelled with the tenant and the processor.
    let rows: Vec<(String, &ProcessorStats)> = stats
        .tenants
        .iter()
        .flat_map(|(tenant, processors)| {
            processors.iter().map(move |(processor, s)| {
                let labels = format!(
                    "tenant=\"{}\",processor=\"{}\"",
                    escape(tenant),
                    escape(processor)
                );
                (labels, s)
            })
        })
        .collect();
    header(
        &mut out,
        "weir_executions_total",
        "counter",
        "Finished executions by tenant, processor (or workflow) and outcome.",
    );
    for (labels, s) in &rows {
        let _ = writeln!(
            out,
            "weir_executions_total{{{labels},outcome=\"ok\"}} {}",
            s.completed
        );
        let _ = writeln!(
            out,
            "weir_executions_total{{{labels},outcome=\"failed\"}} {}",
            s.failed
        );
    }
    let per_processor: [Family; 4] = [
        (
            "weir_executions_started_total",
            "counter",
            "Executions started by tenant and processor (or workflow).",
            |s| s.started,
        ),
        (
            "weir_fuel_consumed_total",
            "counter",
            "Fuel consumed by finished executions, by tenant and processor (or workflow).",
            |s| s.fuel_consumed,
        ),
        (
            "weir_execution_peak_memory_bytes_sum",
            "counter",
            "Finished executions' peak linear memory in bytes, added up (divide by \
             weir_executions_total for the mean), by tenant and processor (or workflow).",
            |s| s.total_peak_memory_bytes,
        ),
        (
            "weir_executions_running",
            "gauge",
            "Executions running (or waiting to run) now, by tenant and processor (or workflow).",
            |s| s.running,
        ),
    ];
    for (name, kind, help, value) in per_processor {
        header(&mut out, name, kind, help);
        for (labels, s) in &rows {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(s));
        }
    }
    header(
        &mut out,
        "weir_execution_duration_seconds",
        "histogram",
        "Wall-clock time of finished executions, by tenant and processor (or workflow).",
    );
    for (labels, s) in &rows {
        let mut cumulative = 0;
        let mut fine = DURATION_BUCKETS_US
            .iter()
            .zip(&s.duration_buckets)
            .peekable();
        for edge in HISTOGRAM_EDGES_US {
            // Every edge is one of the runtime's bucket bounds: the sum is exact.
            while let Some((_, count)) = fine.next_if(|(bound, _)| **bound <= edge) {
                cumulative += count;
            }
            let le = edge as f64 / 1e6;
            let _ = writeln!(
                out,
                "weir_execution_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
            );
        }
        let count: u64 = s.duration_buckets.iter().sum();
        let _ = writeln!(
            out,
            "weir_execution_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
        );
        let sum = s.total_duration_us as f64 / 1e6;
        let _ = writeln!(out, "weir_execution_duration_seconds_sum{{{labels}}} {sum}");
        let _ = writeln!(
            out,
            "weir_execution_duration_seconds_count{{{labels}}} {count}"
        );
    }
    out
}

/// A per-processor metric family: name, type, help, and the counter it reports.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ProcessorStats) -> u64,
);

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_edges_are_bucket_bounds_and_counts_are_cumulative() {
        for edge in HISTOGRAM_EDGES_US {
            assert!(DURATION_BUCKETS_US.contains(&edge), "{edge}");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let weir = runtime.block_on(async {
            let weir = Runtime::local().build().await.unwrap();
            weir.start();
            weir
        });
        let mut stats = weir.stats();
        let mut row = ProcessorStats::default();
        let bucket = |us: u64| DURATION_BUCKETS_US.partition_point(|b| *b < us);
        row.duration_buckets[bucket(15)] = 2;
        row.duration_buckets[bucket(30)] = 1;
        row.duration_buckets[bucket(70_000_000)] = 1;
        stats
            .tenants
            .entry("t".into())
            .or_default()
            .insert("p".into(), row);
        let text = render(&weir, &stats);
        let line = |le: &str| {
            format!(
                "weir_execution_duration_seconds_bucket{{tenant=\"t\",processor=\"p\",le=\"{le}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 0\n", line("0.00001"))), "{text}");
        assert!(
            text.contains(&format!("{} 2\n", line("0.000025"))),
            "{text}"
        );
        assert!(text.contains(&format!("{} 3\n", line("0.00005"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", line("60"))), "{text}");
        assert!(text.contains(&format!("{} 4\n", line("+Inf"))), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape("plain-name"), "plain-name");
    }
}

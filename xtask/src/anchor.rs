//! `cargo xtask bench side-by-side`: weir's `execute` bench and AM2Z's own benchmark (the
//! anchor weir must beat, in `../shared/anchors/am2z`), interleaved round by round on this
//! machine, and the ratios the README's claims rest on. A figure from another machine or
//! another hour says nothing here: only ratios measured in one run do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One round's p50s (µs) by case.
type Round = BTreeMap<String, f64>;

/// A ratio: weir's case over AM2Z's, and the goal the issue sets for it (`None`: shown
/// for what it explains).
struct Ratio {
    what: &'static str,
    weir: &'static str,
    am2z: &'static str,
    goal: Option<f64>,
}

const RATIOS: [Ratio; 8] = [
    Ratio {
        what: "fresh sandbox ÷ AM2Z on Node",
        weir: "weir (public API)",
        am2z: "node local_single_seq",
        goal: Some(1.0),
    },
    Ratio {
        what: "warm instance ÷ AM2Z on Bun",
        weir: "weir, warm instance (public API)",
        am2z: "bun local_single_seq",
        goal: Some(1.0),
    },
    Ratio {
        what: "warm instance ÷ AM2Z on Node",
        weir: "weir, warm instance (public API)",
        am2z: "node local_single_seq",
        goal: Some(1.0),
    },
    Ratio {
        what: "chain of 10, fresh ÷ AM2Z on Node",
        weir: "weir chain of 10",
        am2z: "node local_chain10_seq",
        goal: Some(1.0),
    },
    Ratio {
        what: "parallel of 3, fresh ÷ AM2Z on Node",
        weir: "weir parallel of 3",
        am2z: "node local_par3_seq",
        goal: Some(1.0),
    },
    Ratio {
        what: "chain of 10, warm ÷ AM2Z on Node",
        weir: "weir chain of 10, warm",
        am2z: "node local_chain10_seq",
        goal: Some(1.0),
    },
    // The floors weir builds on, against the same anchor: what no host code of weir's
    // can go below.
    Ratio {
        what: "raw wasmtime fresh (weir's engine) ÷ AM2Z on Node",
        weir: "raw wasmtime, weir's engine config",
        am2z: "node local_single_seq",
        goal: None,
    },
    Ratio {
        what: "raw wasmtime reused instance ÷ AM2Z on Bun",
        weir: "raw wasmtime, reused instance",
        am2z: "bun local_single_seq",
        goal: None,
    },
];

/// Runs `rounds` rounds, each weir's bench then AM2Z's on Node and on Bun, and prints each
/// round's figures and every ratio's range over the rounds.
pub fn side_by_side(root: &Path, rounds: usize) -> Result<(), String> {
    let anchor = anchor_dir(root)?;
    let work = am2z_work()?;
    // AM2Z's own script installs bun, tsx and AM2Z's dependencies the first time; its three
    // rounds also warm this machine's caches for it.
    eprintln!("== AM2Z: set up and warm up ({})", anchor.display());
    let status = Command::new(anchor.join("run"))
        .env("AM2Z_WORK", &work)
        .status()
        .map_err(|e| format!("cannot run {}/run: {e}", anchor.display()))?;
    if !status.success() {
        return Err(format!("{}/run failed: {status}", anchor.display()));
    }
    let bench = build_bench(root)?;
    let mut all = Vec::new();
    for round in 1..=rounds {
        eprintln!("== round {round} of {rounds}: weir");
        let mut figures = weir_round(&bench)?;
        for runtime in ["tsx", "bun"] {
            eprintln!("== round {round} of {rounds}: AM2Z on {runtime}");
            figures.extend(am2z_round(&anchor, &work, runtime, round)?);
        }
        print_round(round, &figures);
        all.push(figures);
    }
    print_summary(&all);
    Ok(())
}

/// The anchor's folder: `WEIR_AM2Z_ANCHOR`, else `../shared/anchors/am2z` beside the
/// repository.
fn anchor_dir(root: &Path) -> Result<PathBuf, String> {
    let dir = match std::env::var_os("WEIR_AM2Z_ANCHOR") {
        Some(dir) => PathBuf::from(dir),
        None => root.join("../shared/anchors/am2z"),
    };
    if dir.join("bench.mts").is_file() && dir.join("run").is_file() {
        Ok(dir)
    } else {
        Err(format!(
            "AM2Z's benchmark is not at {} (its `run` and `bench.mts`): set WEIR_AM2Z_ANCHOR \
             to the folder that holds them",
            dir.display()
        ))
    }
}

/// Where AM2Z's script keeps its tools and sources.
fn am2z_work() -> Result<PathBuf, String> {
    match std::env::var_os("AM2Z_WORK") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".cache/weir/am2z"))
            .ok_or_else(|| "HOME is not set: set AM2Z_WORK".to_string()),
    }
}

/// Builds weir's `execute` bench and returns its executable.
fn build_bench(root: &Path) -> Result<PathBuf, String> {
    eprintln!("== building weir's execute bench");
    let root = root.display().to_string();
    let artifacts = crate::cargo_artifacts(
        &[
            "bench",
            "--locked",
            "--manifest-path",
            &format!("{root}/Cargo.toml"),
            "-p",
            "weir-tests",
            "--bench",
            "execute",
            "--no-run",
        ],
        "building the execute bench",
    )?;
    artifacts
        .iter()
        .filter(|m| m["target"]["name"] == "execute")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo built no `execute` bench executable".to_string())
}

/// One run of weir's bench: its p50s by case, read from its tables.
fn weir_round(bench: &Path) -> Result<Round, String> {
    let output = Command::new(bench)
        .arg("--bench")
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bench.display()))?;
    if !output.status.success() {
        return Err(format!("the execute bench failed: {}", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let figures = weir_figures(&text);
    if figures.is_empty() {
        return Err(format!("the execute bench printed no table:\n{text}"));
    }
    Ok(figures)
}

/// The p50 column of the bench's markdown tables, by case.
fn weir_figures(text: &str) -> Round {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let p50 = cells.get(1)?.parse::<f64>().ok()?;
            Some((cells[0].to_string(), p50))
        })
        .collect()
}

/// One run of AM2Z's benchmark (its local runtime) on `runtime` (`tsx` for Node, `bun`):
/// its p50s, as `node LABEL` / `bun LABEL`.
fn am2z_round(anchor: &Path, work: &Path, runtime: &str, round: usize) -> Result<Round, String> {
    let tools = work.join("tools/node_modules/.bin");
    let path = match std::env::var_os("PATH") {
        Some(path) => {
            let mut dirs = vec![tools.clone()];
            dirs.extend(std::env::split_paths(&path));
            std::env::join_paths(dirs).map_err(|e| e.to_string())?
        }
        None => tools.clone().into_os_string(),
    };
    let output = Command::new(tools.join(runtime))
        .arg(anchor.join("bench.mts"))
        .env("PATH", path)
        .env("AM2Z_DIR", work.join("src"))
        .env("PARTS", "local")
        .env("LOGGER", "silent")
        .env("RUN_LABEL", format!("{runtime}-{round}"))
        .output()
        .map_err(|e| format!("cannot run AM2Z's benchmark on {runtime}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "AM2Z's benchmark failed on {runtime}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let label = if runtime == "bun" { "bun" } else { "node" };
    let figures: Round = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok())
        .filter_map(|d| {
            let case = d["label"].as_str()?;
            let p50 = d["p50_us"].as_f64()?;
            Some((format!("{label} {case}"), p50))
        })
        .collect();
    if figures.is_empty() {
        return Err(format!("AM2Z's benchmark on {runtime} printed no figures"));
    }
    Ok(figures)
}

fn print_round(round: usize, figures: &Round) {
    println!("round {round}:");
    for ratio in &RATIOS {
        if let (Some(weir), Some(am2z)) = (figures.get(ratio.weir), figures.get(ratio.am2z)) {
            println!(
                "  {:<52} {:>8.1} µs ÷ {:>8.1} µs = {:.2}×",
                ratio.what,
                weir,
                am2z,
                weir / am2z
            );
        }
    }
}

fn print_summary(rounds: &[Round]) {
    println!();
    println!(
        "| ratio ({} rounds, interleaved) | median | range | goal |",
        rounds.len()
    );
    println!("|---|---:|---:|---:|");
    for ratio in &RATIOS {
        let mut values: Vec<f64> = rounds
            .iter()
            .filter_map(|r| Some(r.get(ratio.weir)? / r.get(ratio.am2z)?))
            .collect();
        if values.is_empty() {
            continue;
        }
        values.sort_by(f64::total_cmp);
        let median = values[values.len() / 2];
        let goal = ratio
            .goal
            .map_or_else(|| "—".to_string(), |goal| format!("≤ {goal:.1}×"));
        println!(
            "| {} | {median:.2}× | {:.2}–{:.2}× | {goal} |",
            ratio.what,
            values[0],
            values[values.len() - 1],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchs_tables_are_read_by_case() {
        let text = "one execution\n\n| case | p50 µs | p99 µs | p50 ÷ raw |\n|---|---:|---:|---:|\n\
                    | weir (public API) | 46.2 | 80.1 | 1.50× |\n| weir chain of 10 | 480.0 | 600.0 | 10.0× | ≤ 12× |\n";
        let figures = weir_figures(text);
        assert_eq!(figures["weir (public API)"], 46.2);
        assert_eq!(figures["weir chain of 10"], 480.0);
        assert_eq!(figures.len(), 2, "{figures:?}");
    }
}

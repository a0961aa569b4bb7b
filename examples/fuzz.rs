//! High-volume fuzz driver: millions of generated and mutated inputs per
//! target through the parsers kubemux runs on untrusted bytes (see
//! `examples/shared/fuzz_targets.rs` for the targets and the engine).
//!
//! ```sh
//! cargo build --release --example fuzz
//! nice target/release/examples/fuzz --inputs 10000000            # every target
//! target/release/examples/fuzz --target key --inputs 1000000 --seed 7
//! target/release/examples/fuzz --list
//! ```
//!
//! Prints one line per target (inputs, accepted, corpus, failures, time,
//! rate) and every failure with its input as a Rust byte string; exits
//! non-zero if any target failed.

#[path = "shared/fuzz_targets.rs"]
mod fuzz_targets;

use std::time::Instant;

use anyhow::{Result, bail};
use clap::Parser;

/// High-volume fuzz driver (see the module documentation).
#[derive(Parser, Debug)]
#[command(name = "fuzz")]
struct Args {
    /// Target name; all targets when absent.
    #[arg(long)]
    target: Option<String>,
    /// Inputs per target.
    #[arg(long, default_value_t = 1_000_000)]
    inputs: u64,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.list {
        for t in fuzz_targets::TARGETS {
            println!("{:<18} {}", t.name, t.about);
        }
        return Ok(());
    }
    let targets: Vec<_> = fuzz_targets::TARGETS
        .iter()
        .filter(|t| args.target.as_deref().is_none_or(|n| n == t.name))
        .collect();
    if targets.is_empty() {
        bail!("no target named {:?} (see --list)", args.target);
    }
    fuzz_targets::quiet_panics();
    println!(
        "{:<18} {:>12} {:>12} {:>7} {:>8} {:>9} {:>10}",
        "target", "inputs", "accepted", "corpus", "failures", "secs", "inputs/s"
    );
    let mut failed = false;
    for t in targets {
        let start = Instant::now();
        let out = fuzz_targets::run(t, args.inputs, args.seed);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<18} {:>12} {:>12} {:>7} {:>8} {:>9.1} {:>10.0}",
            t.name,
            out.inputs,
            out.accepted,
            out.corpus,
            out.failures.len(),
            secs,
            out.inputs as f64 / secs.max(1e-9)
        );
        for f in &out.failures {
            failed = true;
            println!(
                "  FAILURE in {}: {}\n    input: {}",
                t.name,
                f.what,
                f.literal()
            );
        }
    }
    if failed {
        bail!("some targets failed");
    }
    Ok(())
}

//! Writes the reproducible test GeoIP database, `build(&test_entries())` from
//! `switchyard_testkit::mmdb`, to a file:
//!
//! ```text
//! cargo run --example gen_geo_db [-- OUTPUT_PATH]
//! ```
//!
//! The default output is the committed `geo-data/switchyard-test.mmdb` of this checkout,
//! wherever the command is run from; `tests/geo_data.rs` fails until it is regenerated after
//! a change to the entries or the writer. Arguments are parsed by hand: one optional path.

use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_OUTPUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/geo-data/switchyard-test.mmdb");

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let output = match args.as_slice() {
        [] => PathBuf::from(DEFAULT_OUTPUT),
        [flag] if flag == "-h" || flag == "--help" => {
            println!("usage: gen_geo_db [OUTPUT_PATH]\n\ndefault OUTPUT_PATH: {DEFAULT_OUTPUT}");
            return ExitCode::SUCCESS;
        }
        [path] => PathBuf::from(path),
        _ => {
            eprintln!("usage: gen_geo_db [OUTPUT_PATH]");
            return ExitCode::from(2);
        }
    };
    match switchyard_testkit::mmdb::write_test_db(&output) {
        Ok(()) => {
            let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
            println!("wrote {} ({size} bytes)", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen_geo_db: {e}");
            ExitCode::FAILURE
        }
    }
}

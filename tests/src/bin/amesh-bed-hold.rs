//! Builds a small bed (one pod running a process, a pin directory) and holds it until it is
//! told to stop: lets tests check that Ctrl-C / SIGTERM remove everything.
#![forbid(unsafe_code)]

use amesh_testbed::TestBed;
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bed = TestBed::new()?;
    let pod = bed.add_pod("p")?;
    let mut sleeper = pod.command("sleep");
    sleeper.arg("600");
    let _proc = pod.spawn(sleeper)?;
    std::fs::create_dir_all(bed.pin_root())?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", bed.prefix())?;
    out.flush()?;
    loop {
        std::thread::park();
    }
}

//! Zygote mode: this program's own binary is the fork server. State built by `preload` (here a
//! lookup table) is built once, in the server, and every child shares it copy-on-write.
//!
//! ```sh
//! cargo run -p forkserver-client --example zygote
//! ```

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::OnceLock;

use forkserver_client::{Client, Stdio};
use forkserver_server::{Invocation, Zygote};

/// Built once in the server before it serves; inherited by every child.
static TABLE: OnceLock<Vec<u64>> = OnceLock::new();

fn build_table() {
    // Something expensive the workers should not rebuild: 8 MiB of squares.
    TABLE.get_or_init(|| (0..1u64 << 20).map(|i| i * i).collect());
}

/// An entry point: reads indices from the payload, writes their squares to its stdout (fd 1).
fn squares(call: Invocation) -> i32 {
    let table = TABLE.get().expect("preloaded in the server");
    let mut out = std::fs::File::from(call.fd(1).unwrap().try_clone_to_owned().unwrap());
    for word in String::from_utf8_lossy(call.payload()).split_whitespace() {
        let Ok(i) = word.parse::<usize>() else {
            return 2;
        };
        let Some(sq) = table.get(i) else { return 3 };
        writeln!(out, "{i}^2 = {sq}").unwrap();
    }
    0
}

/// A typed entry point: an index in, its square out, or an error's text.
fn square(i: usize) -> Result<u64, String> {
    let table = TABLE.get().expect("preloaded in the server");
    table
        .get(i)
        .copied()
        .ok_or_else(|| format!("{i} is past the table's {} entries", table.len()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Launched as the server? Then this preloads, serves, and never returns.
    Zygote::new()
        .preload(build_table)
        .entry("squares", squares)
        .typed_fallible("square", square)
        .serve_if_requested();

    // The application: start its own binary as the server and call the entry point.
    let client = Client::launch(std::env::current_exe()?)?;
    let mut child = client
        .call("squares", "3 1000 65535")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out)?;
    let status = child.wait()?;
    print!("{out}");
    println!(
        "entry point 'squares' (pid {}) ended: {status}",
        child.pid()
    );

    // Typed calls: a serde value in, a value (or the entry's error, panic, signal...) out.
    let sq: u64 = client.typed::<usize, u64>("square").spawn(&4096)?.join()?;
    println!("typed 'square'(4096) = {sq}");
    match client
        .typed::<usize, u64>("square")
        .spawn(&(1 << 21))?
        .join()
    {
        Err(forkserver_client::CallError::Failed(why)) => println!("typed 'square' refused: {why}"),
        other => println!("typed 'square': {other:?}"),
    }

    // Exec jobs work through the same server.
    let status = client
        .command("sh")
        .args(["-c", "echo hello from $$"])
        .stdout(Stdio::from(std::io::stdout().as_fd().try_clone_to_owned()?))
        .spawn()?
        .wait()?;
    println!("sh ended: {status}");
    Ok(())
}

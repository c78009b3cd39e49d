//! The conformance zygote: a zygote server whose typed entries and worker the conformance
//! runner's `typed/*` and `worker/*` checks call with the JSON codec (PROTOCOL.md §11), from
//! Python written from the spec alone.
//!
//! ```sh
//! cargo test -p forkserver-client --test conformance_zygote
//! ```
//!
//! Run plainly (as `cargo test` does), it launches itself as the server without a key and runs
//! `spec/conformance/conformance.py --zygote-socket PATH` against it; launched (it finds the
//! launch variables), it serves. The entries, with the type names a client puts in the
//! fingerprint (§11.2):
//!
//! | entry | kind | argument type | result type | does |
//! |---|---|---|---|---|
//! | `area` | typed | `(u32, u32)` | `u64` | `w * h` |
//! | `halve` | typed, fallible | `conformance_zygote::Size` | `conformance_zygote::Size` | halves `w` and `h`; `Err("cannot halve WxH")` if one is odd |
//! | `describe` | typed | `conformance_zygote::Item` | `alloc::string::String` | an untagged enum inside a flattened struct, described |
//! | `panics` | typed | `u32` | `u32` | `panic!("typed panic {x}")` |
//! | `exits` | typed | `i32` | `u32` | `process::exit(x)` |
//! | `sleeps` | typed | `u64` | `u64` | sleeps `x` ms, returns `x` |
//! | `digest` | typed | `alloc::vec::Vec<u8>` | `(u64, u64)` | the length and the FNV-1a 64 of the bytes (large arguments, §11.8) |
//! | `counter` | worker, fallible | `conformance_zygote::Op` | `u64` | `{"Add": n}` adds, `{"Fail": text}` is `Err(text)`, `"Panic"` panics |
//! | `untyped` | plain entry | | | exits 0 |

use std::process::Command;

use forkserver_client::Client;
use forkserver_server::{Invocation, Zygote};
use serde::{Deserialize, Serialize};

/// A size with a flattened label.
#[derive(Serialize, Deserialize)]
struct Size {
    w: u32,
    h: u32,
    #[serde(flatten)]
    meta: Meta,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    label: String,
}

/// A name with a shape flattened into it: `{"name": "a", "side": 2}` or
/// `{"name": "b", "w": 2, "h": 3}`.
#[derive(Deserialize)]
struct Item {
    name: String,
    #[serde(flatten)]
    shape: Shape,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shape {
    Square { side: u32 },
    Rect { w: u32, h: u32 },
}

/// The worker's requests.
#[derive(Deserialize)]
enum Op {
    Add(u64),
    Fail(String),
    Panic,
}

fn area((w, h): (u32, u32)) -> u64 {
    u64::from(w) * u64::from(h)
}

fn halve(s: Size) -> Result<Size, String> {
    if s.w % 2 == 1 || s.h % 2 == 1 {
        return Err(format!("cannot halve {}x{}", s.w, s.h));
    }
    let label = format!("{} halved", s.meta.label);
    Ok(Size {
        w: s.w / 2,
        h: s.h / 2,
        meta: Meta { label },
    })
}

fn describe(item: Item) -> String {
    match item.shape {
        Shape::Square { side } => format!("{}: a square of side {side}", item.name),
        Shape::Rect { w, h } => format!("{}: a {w}x{h} rectangle", item.name),
    }
}

fn panics(x: u32) -> u32 {
    panic!("typed panic {x}")
}

fn exits(code: i32) -> u32 {
    std::process::exit(code)
}

fn sleeps(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    ms
}

/// The bytes' length and FNV-1a 64 (offset basis and prime of §11.2).
fn digest(bytes: Vec<u8>) -> (u64, u64) {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h: u64, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (bytes.len() as u64, h)
}

fn zero() -> u64 {
    0
}

fn counter(count: &mut u64, op: Op) -> Result<u64, String> {
    match op {
        Op::Add(n) => *count += n,
        Op::Fail(text) => return Err(text),
        Op::Panic => panic!("worker panic at {count}"),
    }
    Ok(*count)
}

fn untyped(_call: Invocation) -> i32 {
    0
}

fn main() {
    Zygote::new()
        .typed("area", area)
        .typed_fallible("halve", halve)
        .typed("describe", describe)
        .typed("panics", panics)
        .typed("exits", exits)
        .typed("sleeps", sleeps)
        .typed("digest", digest)
        .worker_fallible("counter", zero, counter)
        .entry("untyped", untyped)
        .serve_if_requested();

    // The Python client has a key too, but needs none here: a server without one.
    let server = Client::launcher(std::env::current_exe().expect("this binary"))
        .authenticate(false)
        .launch()
        .expect("launch the conformance zygote");
    let runner = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spec/conformance/conformance.py"
    );
    let out = Command::new("python3")
        .arg(runner)
        .arg("--zygote-socket")
        .arg(server.socket_path())
        // `cargo test --test conformance_zygote -- PATTERN` runs the checks that match.
        .args(
            std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .flat_map(|pattern| ["-k".to_owned(), pattern]),
        )
        .output()
        .expect("python3 is needed by the conformance checks");
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    // The runner's summary, `N passed, M failed`, as libtest's line (CI sums those).
    let summary = text.lines().rev().find_map(|l| {
        let (p, f) = l.split_once(" passed, ")?;
        Some((
            p.parse::<u32>().ok()?,
            f.strip_suffix(" failed")?.parse::<u32>().ok()?,
        ))
    });
    let (passed, failed) = summary.unwrap_or((0, 1));
    let result = if failed == 0 && out.status.success() {
        "ok"
    } else {
        "FAILED"
    };
    println!("\ntest result: {result}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out");
    std::process::exit(if result == "ok" { 0 } else { 101 });
}

//! The client on tokio (feature `tokio`), with this test binary as a zygote server (harness =
//! false: `main` serves when launched, before any runtime starts).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use forkserver_client::{Client, Error, Stdio};
use forkserver_server::Zygote;

/// One test: a future on the shared client.
type AsyncTest = fn(Client) -> Pin<Box<dyn Future<Output = ()>>>;

/// One test that starts a runtime of its own.
type OwnRuntimeTest = (&'static str, fn(Client));

fn main() {
    Zygote::new()
        .preload(|| {
            // A slow preload, for the relaunch test.
            if let Ok(ms) = std::env::var("ASYNC_TEST_PRELOAD_MS") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
        })
        .serve_if_requested();
    // 1,000 children alive at once hold 1,000 connections: room for them here.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let client = Client::launch(std::env::current_exe().unwrap()).expect("launch");
    let tests: &[(&str, AsyncTest)] = &[
        ("output_status_and_exit_codes", |c| {
            Box::pin(output_status_and_exit_codes(c))
        }),
        ("kill_while_another_task_waits", |c| {
            Box::pin(kill_while_another_task_waits(c))
        }),
        ("a_cancelled_wait_loses_nothing", |c| {
            Box::pin(a_cancelled_wait_loses_nothing(c))
        }),
        ("signals_answered_while_another_task_waits", |c| {
            Box::pin(signals_answered_while_another_task_waits(c))
        }),
        ("a_thousand_concurrent_children_from_eight_tasks", |c| {
            Box::pin(a_thousand_concurrent_children_from_eight_tasks(c))
        }),
    ];
    // Each starts its own runtime.
    let on_their_own_runtime: &[OwnRuntimeTest] = &[
        ("current_thread_runtime", current_thread_runtime),
        (
            "a_relaunch_does_not_stall_a_current_thread_runtime",
            a_relaunch_does_not_stall_a_current_thread_runtime,
        ),
    ];
    let mut failed = 0;
    let mut outcomes = Vec::new();
    for (name, test) in tests {
        let client = client.clone();
        outcomes.push((
            name,
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(test(client))
            })),
        ));
    }
    for (name, test) in on_their_own_runtime {
        let client = client.clone();
        outcomes.push((
            name,
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(client))),
        ));
    }
    let total = outcomes.len();
    for (name, outcome) in outcomes {
        match outcome {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out",
        if failed == 0 { "ok" } else { "FAILED" },
        total - failed
    );
    drop(runtime);
    drop(client);
    std::process::exit(i32::from(failed != 0));
}

/// The server's fd count and children once the client's idle connections are closed.
fn server_fds_and_children(client: &Client) -> (usize, String) {
    client.close_idle_connections();
    let pid = client.launched_server_pid().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let kids =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        // The status probe's own connection is open while it is read: settle on a stable pair.
        std::thread::sleep(Duration::from_millis(20));
        let again = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        if (fds == again && kids.trim().is_empty()) || Instant::now() > until {
            return (fds, kids);
        }
    }
}

async fn output_status_and_exit_codes(client: Client) {
    let out = client
        .command("sh")
        .args(["-c", "echo out; echo err >&2; exit 3"])
        .output_async()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b"out\n"[..], &b"err\n"[..])
    );
    let st = client
        .command("sh")
        .args(["-c", "kill -TERM $$"])
        .status_async()
        .await
        .unwrap();
    assert_eq!(st.signal(), Some(15));
    // A piped stdin, written asynchronously, closed by wait_with_output.
    let mut child = client
        .command("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn_async()
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"through tokio")
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.stdout, b"through tokio");
    // A missing program fails the spawn, as with std.
    let err = client
        .command("/nonexistent/x")
        .spawn_async()
        .await
        .unwrap_err();
    assert!(err.is_exec_failure(), "{err}");
}

/// A `sleep 30` child, shared, and a task waiting for it.
async fn waited_sleeper(
    client: &Client,
) -> (
    Arc<forkserver_client::AsyncChild>,
    tokio::task::JoinHandle<forkserver_client::Result<forkserver_client::ExitStatus>>,
) {
    let child = Arc::new(
        client
            .command("sleep")
            .arg("30")
            .spawn_async()
            .await
            .unwrap(),
    );
    let waiter = tokio::spawn({
        let child = child.clone();
        async move { child.wait().await }
    });
    (child, waiter)
}

async fn kill_while_another_task_waits(client: Client) {
    let (child, waiter) = waited_sleeper(&client).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(child.try_wait().unwrap().is_none());
    child.signal(nix::libc::SIGTERM).await.unwrap();
    let status = waiter.await.unwrap().unwrap();
    assert_eq!(status.signal(), Some(15));
    // After the end: kill is Ok, signal says so, wait answers at once.
    child.kill().await.unwrap();
    assert!(matches!(
        child.signal(nix::libc::SIGTERM).await,
        Err(Error::AlreadyExited)
    ));
    assert_eq!(child.wait().await.unwrap(), status);
}

/// A signal that does not end the child, sent while another task waits: its answer may be read
/// by the waiting task, which must wake the signalling one (no lost wake-up).
async fn signals_answered_while_another_task_waits(client: Client) {
    let (child, waiter) = waited_sleeper(&client).await;
    for _ in 0..200 {
        let answered =
            tokio::time::timeout(Duration::from_secs(5), child.signal(nix::libc::SIGCONT)).await;
        assert!(matches!(answered, Ok(Ok(()))), "{answered:?}");
    }
    // Signals whose futures are dropped before their answer: later ones still get theirs.
    for _ in 0..20 {
        let _ = tokio::time::timeout(Duration::ZERO, child.signal(nix::libc::SIGCONT)).await;
    }
    child.signal(nix::libc::SIGCONT).await.unwrap();
    child.kill().await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().signal(), Some(9));
}

async fn a_cancelled_wait_loses_nothing(client: Client) {
    let child = client
        .command("sh")
        .args(["-c", "sleep 0.3; exit 9"])
        .spawn_async()
        .await
        .unwrap();
    // Cancelled twice before the end, then awaited to it.
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_millis(50), child.wait()).await;
        assert!(r.is_err(), "finished early: {r:?}");
    }
    assert_eq!(child.wait().await.unwrap().code(), Some(9));
}

async fn a_thousand_concurrent_children_from_eight_tasks(client: Client) {
    let before = server_fds_and_children(&client);
    let t = Instant::now();
    let tasks: Vec<_> = (0..8u32)
        .map(|task| {
            let client = client.clone();
            tokio::spawn(async move {
                // 125 children per task, all alive before any is awaited.
                let mut children = Vec::new();
                for i in 0..125u32 {
                    let code = (task * 125 + i) % 200;
                    let child = client
                        .command("sh")
                        .args(["-c", &format!("read x; exit {code}")])
                        .stdin(Stdio::piped())
                        .spawn_async()
                        .await
                        .unwrap();
                    children.push((code, child));
                }
                let mut sum = 0u32;
                for (code, mut child) in children {
                    drop(child.stdin.take()); // EOF: `read` returns, the child exits
                    let status = child.wait().await.unwrap();
                    assert_eq!(status.code(), Some(code as i32));
                    sum += code;
                }
                sum
            })
        })
        .collect();
    let mut sum = 0;
    for task in tasks {
        sum += task.await.unwrap();
    }
    assert_eq!(sum, (0..1000u32).map(|i| i % 200).sum::<u32>());
    eprintln!("1,000 concurrent children from 8 tasks: {:?}", t.elapsed());
    assert_eq!(server_fds_and_children(&client), before);
}

fn current_thread_runtime(client: Client) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let child = client.command("true").spawn_async().await.unwrap();
        assert!(child.wait().await.unwrap().success());
    });
}

/// `spawn_async` relaunches a server whose preload takes a second (the one it had was killed)
/// while a task ticks every millisecond on the same current-thread runtime: the ticks go on.
/// A client that did the relaunch (or any of its blocking I/O) inline would stop them for
/// the whole second.
fn a_relaunch_does_not_stall_a_current_thread_runtime(_client: Client) {
    const PRELOAD: Duration = Duration::from_secs(1);
    // Far above a tick's scheduling jitter on a loaded 2-core machine, far below the stall.
    const MAX_GAP: Duration = Duration::from_millis(50);
    let client = Client::launcher(std::env::current_exe().unwrap())
        .env("ASYNC_TEST_PRELOAD_MS", PRELOAD.as_millis().to_string())
        .launch()
        .unwrap();
    // A kept connection to the old server: its refused send leads to the relaunch.
    assert!(client.command("true").status().unwrap().success());
    let old = client.launched_server_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Dead (a zombie, our child) before the runtime starts: its sockets are closed.
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{old}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
    {
        assert!(Instant::now() < until, "the server did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (gap, took) = rt.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut largest = Duration::ZERO;
                let mut last = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let now = Instant::now();
                    largest = largest.max(now - last);
                    last = now;
                }
                largest
            }
        });
        tokio::task::yield_now().await;
        let t = Instant::now();
        let status = client.command("true").status_async().await.unwrap();
        let took = t.elapsed();
        assert!(status.success());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (ticker.await.unwrap(), took)
    });
    assert_ne!(client.launched_server_pid(), Some(old), "not relaunched");
    assert!(
        took >= PRELOAD,
        "the relaunch took {took:?}, less than the preload"
    );
    println!("relaunch took {took:?}; largest gap between ticks {gap:?}");
    assert!(
        gap < MAX_GAP,
        "the runtime stalled for {gap:?} during the relaunch"
    );
}
